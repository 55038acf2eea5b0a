"""Measuring one optimizer step: median time, peak transient memory, persistent state."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from typing import Callable, List

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(step: Callable[[], None], device: torch.device, warmup: int, iters: int) -> float:
    """Median wall time of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times: List[float] = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_transient_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Largest amount of memory a step holds above what it started with.

    CUDA: the caching allocator's peak statistics. CPU: the allocation events the
    torch profiler records (every ``[memory]`` event, summed in time order).
    """
    if device.type == "cuda":
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():
        prof.start()
    try:
        step()
    finally:
        with _quiet_stderr():
            prof.stop()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the process's stderr (file descriptor 2) for a moment: the profiler's C++ side prints
    ``USDT: ... profiler_start`` / ``profiler_stop`` lines there at every start and stop."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer keeps between steps (shared storages counted once)."""
    return _tensor_bytes(list(optimizer.state.values()))


def workspace_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the scratch buffers a fast backend keeps between steps to reuse (``_workspaces``).

    They are step memory kept allocated, so ``pylo-bench`` adds them to the transient figure.
    """
    return _tensor_bytes(getattr(optimizer, "_workspaces", {}))


def _tensor_bytes(root) -> int:
    """Bytes of the tensors reachable from ``root`` through containers and object attributes."""
    seen, total = set(), 0
    visited = set()

    def visit(x):
        nonlocal total
        if isinstance(x, torch.Tensor):
            key = (x.untyped_storage().data_ptr(), x.device)
            if key not in seen:
                seen.add(key)
                total += x.untyped_storage().nbytes()
        elif isinstance(x, dict):
            for v in x.values():
                visit(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                visit(v)
        elif hasattr(x, "__dict__") and not isinstance(x, (type, torch.nn.Module)) and id(x) not in visited:
            visited.add(id(x))
            visit(vars(x))

    visit(root)
    return total


def sgemm_gflops(device: torch.device, n: int = 2048) -> float:
    """Measured float32 matmul throughput (the 'peak' that floors are computed from)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    seconds = median_seconds(lambda: torch.mm(a, b), device, warmup=2, iters=5)
    return 2 * n ** 3 / seconds / 1e9
