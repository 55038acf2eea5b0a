"""The GPU check of issue 13: parity, bf16, drift and speed on a real GPU, in one run.

1. ``pylo-parity --device cuda``: every optimizer, config and CUDA backend (naive, foreach, triton)
   against the JAX reference (float32, TF32 off, JAX at ``highest`` precision);
2. bf16 parameters: at every step of every optimizer and backend, the bf16 result is the float32
   step from the same (upcast) parameters, gradient and state, rounded once (bit for bit), and
   the whole bf16 trajectory's distance to the float32 one is reported;
3. drift: triton vs naive on the same gradient stream for 2000 steps (max |delta| per optimizer);
4. ``pylo-bench --device cuda`` on the MLP, transformer and ViT-B/16 workloads beside fused AdamW.

Everything lands under ``--out`` (default ``$OUT``): ``gpu_check.json`` and ``gpu_check.md`` with
the GPU, driver, torch, Triton and JAX versions, plus the parity and bench reports. ``--dry`` runs
a small version of each part (what CI runs on a CPU, with Triton interpreted).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

if "--device" in sys.argv and "cpu" in sys.argv:  # the interpreter must be chosen before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from pylo.parity_tests import optim_db  # noqa: E402
from pylo.spec import OPTIMIZERS  # noqa: E402

#: the drift and bf16 shapes: the parity fixture's kinds, with a matrix large enough for many kernel blocks
SHAPES = {"scalar": (), "vector": (37,), "wide": (16, 300), "square": (256, 256), "conv": (32, 16, 3, 3),
          "embedding": (500, 24)}
DRY_SHAPES = {"scalar": (), "vector": (5,), "wide": (3, 9), "conv": (4, 3, 2, 2)}


def networks(dry: bool) -> Dict[str, Callable[[], torch.nn.Module]]:
    """Each optimizer's random meta-network from the optimizer database: the published size (small for
    ``--dry``). MuLO is left out: it runs AdafacLO's kernels."""
    return {info.name: (lambda info=info: info.make_small_network(0) if dry else info.make_network())
            for info in optim_db.DATABASE if info.make_network is not None}


def build(name: str, named, network, backend: str, num_steps: int):
    info = optim_db.get(name)
    kwargs = {"num_steps": num_steps} if info.horizon is not None else {}
    return info.construct(info.naive, named, network=network, **info.backend_kwargs(backend), **kwargs)


def make_params(shapes, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(n, torch.nn.Parameter((0.5 * torch.randn(s, generator=g)).to(device=device, dtype=dtype)))
            for n, s in shapes.items()]


def set_grads(named, step: int) -> None:
    g = torch.Generator().manual_seed(1000 + step)
    for _, p in named:
        p.grad = (0.1 * torch.randn(p.shape, generator=g)).to(device=p.device, dtype=p.dtype)


def take_step(name: str, opt, step: int) -> None:
    opt.step(loss=2.0 / (1 + step)) if OPTIMIZERS[name].needs_loss else opt.step()


def bf16_check(name: str, backend: str, make_net, device, shapes, steps: int) -> Dict:
    """bf16 steps equal float32 steps from the same point, rounded once; and the trajectory's distance."""
    net = make_net()
    low = make_params(shapes, device, torch.bfloat16)
    ref = make_params(shapes, device, torch.float32)
    for (_, p), (_, q) in zip(low, ref):  # the float32 trajectory starts from the same values
        q.data.copy_(p.data.float())
    opt_low, opt_ref = build(name, low, net, backend, steps), build(name, ref, net, backend, steps)
    worst_ulps, trajectory = 0.0, 0.0
    for t in range(steps):
        shadow = [(n, torch.nn.Parameter(p.detach().float().clone())) for n, p in low]
        opt_shadow = build(name, shadow, net, backend, steps)
        opt_shadow.load_state_dict(copy.deepcopy(opt_low.state_dict()))
        set_grads(low, t)
        set_grads(ref, t)
        for (_, s), (_, p) in zip(shadow, low):  # the same (bf16-rounded) gradient, upcast
            s.grad = p.grad.float()
        for opt in (opt_low, opt_shadow, opt_ref):
            take_step(name, opt, t)
        for (_, p), (_, s), (_, q) in zip(low, shadow, ref):
            rounded = s.detach().to(torch.bfloat16).float()
            ulp = torch.clamp(rounded.abs(), min=torch.finfo(torch.bfloat16).tiny) * 2.0 ** -7
            worst_ulps = max(worst_ulps, float(((p.detach().float() - rounded).abs() / ulp).max()))
            scale = float(q.detach().abs().max()) or 1.0
            trajectory = max(trajectory, float((p.detach().float() - q.detach()).abs().max()) / scale)
    return {"optimizer": name, "backend": backend, "steps": steps, "max_ulps_vs_rounded_float32_step": worst_ulps,
            "max_relative_distance_to_float32_trajectory": trajectory, "passed": worst_ulps == 0.0}


def drift(name: str, make_net, device, shapes, steps: int, fast: str) -> Dict:
    """``fast`` (triton) vs naive on one gradient stream: max |delta param| and where it was reached."""
    net = make_net()
    runs = {b: make_params(shapes, device, torch.float32) for b in ("naive", fast)}
    opts = {b: build(name, named, net, b, steps) for b, named in runs.items()}
    marks, worst = {}, 0.0
    for t in range(steps):
        for b, named in runs.items():
            set_grads(named, t)
            take_step(name, opts[b], t)
        delta = max(float((p.detach() - q.detach()).abs().max()) for (_, p), (_, q) in zip(*runs.values()))
        worst = max(worst, delta)
        if t + 1 in (1, 10, 100, 1000, steps):
            marks[t + 1] = delta
    scale = max(float(p.detach().abs().max()) for _, p in runs["naive"])
    return {"optimizer": name, "backends": f"{fast} vs naive", "steps": steps, "max_abs_delta": worst,
            "delta_at_step": marks, "max_abs_param": scale}


def subprocess_part(args: List[str], log: Path) -> int:
    with log.open("w") as f:
        return subprocess.run([sys.executable, "-m", *args], stdout=f, stderr=subprocess.STDOUT).returncode


def versions(device) -> Dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device)}
    for module in ("triton", "jax", "jaxlib"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    return info


def parity_part(args, out: Path) -> Dict:
    cmd = ["pylo.parity_tests.cli", "--device", args.device, "--out", str(out / "parity"), "--no-progress"]
    backends = ("naive", "triton") if args.dry else ("naive", "foreach", "triton")
    cmd += [x for b in backends for x in ("--backend", b)]
    if args.dry:
        cmd += ["--optimizer", "elo", "--config", "clip"]
    rc = subprocess_part(cmd, out / "parity.log")
    report = out / "parity" / "parity.json"
    return {"returncode": rc, "report": json.loads(report.read_text()) if report.is_file() else None}


def bench_part(args, out: Path) -> Dict:
    cmd = ["pylo.bench.cli", "--device", args.device, "--out", str(out / "bench")]
    if args.dry:
        cmd += ["--shapes", "64x48,48", "--iters", "1", "--warmup", "0", "--no-jax", "--optimizer", "adafaclo",
                "--optimizer", "celo2"]
    else:
        cmd += [x for w in ("mlp", "transformer", "vit_b16") for x in ("--workload", w)]
    rc = subprocess_part(cmd, out / "bench.log")
    report = out / "bench" / "bench.json"
    return {"returncode": rc, "report": json.loads(report.read_text()) if report.is_file() else None}


def markdown(result: Dict) -> str:
    v = result["versions"]
    lines = ["# pylo GPU check", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {val} |" for k, val in v.items()]
    parity = (result.get("parity") or {}).get("report") or {}
    cases = parity.get("cases", []) if isinstance(parity, dict) else []
    if cases:
        lines += ["", "## Parity vs JAX (float32, max |delta param| over all steps and shapes)", "",
                  "| optimizer | config | backend | max abs error | passed |", "|---|---|---|---|---|"]
        lines += [f"| {c.get('optimizer')} | {c.get('config')} | {c.get('backend')} | {c.get('max_abs')} | "
                  f"{c.get('passed')} |" for c in cases]
    lines += ["", "## bf16 parameters", "", "| optimizer | backend | max ulps vs rounded float32 step | "
              "max relative distance to the float32 trajectory | passed |", "|---|---|---|---|---|"]
    lines += [f"| {r['optimizer']} | {r['backend']} | {r['max_ulps_vs_rounded_float32_step']:.2f} | "
              f"{r['max_relative_distance_to_float32_trajectory']:.2e} | {r['passed']} |" for r in result["bf16"]]
    lines += ["", "## Drift", "", "| optimizer | backends | steps | max abs delta | max abs param |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['optimizer']} | {r['backends']} | {r['steps']} | {r['max_abs_delta']:.3e} | "
              f"{r['max_abs_param']:.3e} |" for r in result["drift"]]
    bench = (result.get("bench") or {}).get("report")
    if bench:
        lines += ["", "## Speed", "", "See bench/bench.md beside this file for the full table."]
    lines += ["", f"Took {result['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def parse(argv=None):
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), or cpu with --dry for CI")
    p.add_argument("--dry", action="store_true", help="a small version of every part (CI, CPU)")
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"), help="output folder (default: $OUT)")
    p.add_argument("--skip", action="append", default=[], choices=("parity", "bf16", "drift", "bench"),
                   help="leave a part out (repeatable)")
    p.add_argument("--drift-steps", type=int, help="steps of the drift test (default 2000; --dry: 5)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA requested but not available (use --device cpu --dry)", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    shapes = DRY_SHAPES if args.dry else SHAPES
    nets = networks(args.dry)
    fast = "triton" if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1" else "fused"
    result = {"versions": versions(device), "bf16": [], "drift": []}
    if "parity" not in args.skip:
        result["parity"] = parity_part(args, out)
    if "bf16" not in args.skip:
        backends = ("naive", fast) if args.dry else ("naive", "foreach", fast)
        result["bf16"] = [bf16_check(n, b, make, device, shapes, 3 if args.dry else 50)
                          for n, make in nets.items() for b in backends]
    if "drift" not in args.skip:
        steps = args.drift_steps or (5 if args.dry else 2000)
        result["drift"] = [drift(n, make, device, shapes, steps, fast) for n, make in nets.items()]
    if "bench" not in args.skip:
        result["bench"] = bench_part(args, out)
    result["seconds"] = time.perf_counter() - start
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(result))
    print(markdown(result))
    failed = [part for part in ("parity", "bench") if (result.get(part) or {}).get("returncode")]
    failed += [f"bf16 {r['optimizer']}/{r['backend']}" for r in result["bf16"] if not r["passed"]]
    if failed:
        print(f"gpu_check: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
