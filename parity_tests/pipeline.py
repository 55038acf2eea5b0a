"""Running one parity case the way a user would.

1. seeded meta-parameters from the JAX reference (zero-initialised leaves get
   noise, so biases and decay offsets are exercised), or a real upstream
   checkpoint named by the config (``real_theta``);
2. written as an upstream-format checkpoint (flax msgpack in the configured
   container, or a pickle);
3. converted with ``pylo-convert`` (the CLI entry point, in process);
4. loaded by the torch optimizer with ``checkpoint_path=``;
5. both sides get the same gradient and loss stream; parameters are compared
   after every step, per tensor (conv kernels compared in torch layout).

The JAX side runs on CPU at float32 ``highest`` matmul precision.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from pylo.parity_tests import fixtures
from pylo.parity_tests.configs import ParityConfig
from pylo.parity_tests.registry import ParityInfo

TOLERANCE = 1e-6  # max |param_torch - param_jax| over every step, float32


@dataclass
class ShapeResult:
    shape: List[int]
    max_abs: float = 0.0
    max_rel: float = 0.0  # max |diff| / max |reference value|, per step
    first_bad_step: Optional[int] = None


@dataclass
class CaseResult:
    optimizer: str
    config: str
    backend: str
    description: str
    steps: int
    tolerance: float
    shapes: Dict[str, ShapeResult] = field(default_factory=dict)
    seconds: float = 0.0
    error: Optional[str] = None
    #: max |param_torch - param_jax| over all tensors, per step (the report's error-versus-step plot)
    step_errors: List[float] = field(default_factory=list)

    @property
    def max_abs(self) -> float:
        return max((s.max_abs for s in self.shapes.values()), default=float("nan"))

    @property
    def max_rel(self) -> float:
        return max((s.max_rel for s in self.shapes.values()), default=float("nan"))

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.shapes) and self.max_abs <= self.tolerance

    def to_dict(self) -> Dict:
        d = asdict(self)
        d.update(max_abs=self.max_abs, max_rel=self.max_rel, passed=self.passed)
        return d


def perturb_zero_leaves(theta, seed: int, scale: float):
    """Add N(0, scale^2) noise to every all-zero leaf (biases, decay offsets, initial LSTM state)."""
    import jax

    rng = np.random.default_rng(seed + 3)

    def f(x):
        x = np.asarray(x)
        if scale and x.size and not np.any(x):
            return (x + scale * rng.standard_normal(x.shape)).astype(x.dtype)
        return x

    return jax.tree_util.tree_map(f, theta)


def write_upstream_checkpoint(theta, folder: Path, container: str) -> Path:
    """Write ``theta`` as upstream code writes it."""
    import flax.serialization

    path = folder / ("theta.pickle" if container == "pickle" else "theta.state")
    if container == "pickle":
        data = pickle.dumps(theta)  # μLO / scaling_l2o: a plain pickle of the theta dict
    elif container == "bare":
        data = flax.serialization.to_bytes(theta)  # celo's theta.state
    elif container == "parameter-checkpoint":
        data = flax.serialization.to_bytes({"params": theta, "gen_id": "parity", "step": np.int64(1234)})
    elif container == "tuple":
        data = flax.serialization.to_bytes((theta, "", 0))
    else:
        raise ValueError(f"unknown container {container!r}")
    path.write_bytes(data)
    return path


def read_real_theta(path: Path):
    """A real upstream checkpoint's theta, read by flax itself (independently of ``pylo-convert``)."""
    import flax.serialization

    if not path.is_file():
        raise FileNotFoundError(f"real checkpoint {path} not found (set PYLO_SHARED_CHECKPOINTS)")
    return flax.serialization.msgpack_restore(path.read_bytes())


def make_checkpoint(info: ParityInfo, config: ParityConfig, folder: Path):
    """Steps 1-3: seeded theta from the reference, written upstream's way, converted by ``pylo-convert``.

    Returns ``(reference, theta, converted_folder)``.
    """
    import jax

    from pylo.converters.cli import main as pylo_convert

    folder = Path(folder)
    reference = info.make_reference(config)
    if config.real_theta is not None:
        src = fixtures.shared_checkpoints_dir() / config.real_theta
        theta = read_real_theta(src)
    else:
        theta = perturb_zero_leaves(reference.init(jax.random.PRNGKey(config.seed)), config.seed, config.theta_noise)
        src = write_upstream_checkpoint(theta, folder, config.container)
    ckpt = folder / "converted"
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        status = pylo_convert([str(src), str(ckpt), "--optimizer", info.name])
    if status != 0:
        raise RuntimeError(f"pylo-convert failed: {log.getvalue().strip()}")
    return reference, theta, ckpt


def run_case(info: ParityInfo, config: ParityConfig, backend: str,
             on_step: Optional[Callable[[int], None]] = None, device: str = "cpu",
             small_chunks: bool = True) -> CaseResult:
    """Run one case; the torch side on ``device`` (the JAX reference always on the CPU).

    ``small_chunks``: the fast backends in tiny chunks, so chunk boundaries are exercised (slower);
    ``False`` runs the backend as a user gets it.
    """
    result = CaseResult(info.name, config.name, backend, config.description, config.steps, TOLERANCE)
    start = time.perf_counter()
    try:
        _run(info, config, backend, result, on_step, torch.device(device), small_chunks)
    except Exception:  # a crash is a failed case, reported with its traceback
        result.error = traceback.format_exc(limit=6)
    result.seconds = time.perf_counter() - start
    return result


def _run(info: ParityInfo, config: ParityConfig, backend: str, result: CaseResult, on_step, device,
         small_chunks: bool) -> None:
    import jax
    import jax.numpy as jnp

    with jax.default_matmul_precision("highest"), tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        reference, theta, ckpt = make_checkpoint(info, config, tmp)
        init = fixtures.initial_params(config.shapes, config.seed)
        named = [(n, torch.nn.Parameter(torch.from_numpy(a.copy()).to(device))) for n, a in init.items()]
        opt = info.make_torch(named, str(ckpt), config, info.backend_kwargs(backend, parity=small_chunks))

        lopt = reference.opt_fn(theta)
        state = lopt.init({n: jnp.asarray(fixtures.to_jax_layout(a)) for n, a in init.items()},
                          num_steps=config.num_steps)
        extras = info.reference_extras(opt, named)
        update = jax.jit(lambda s, g, loss: lopt.update(s, g, loss=loss, **extras))
        losses = fixtures.loss_curve(config.steps, config.seed)
        result.shapes = {n: ShapeResult(list(config.shapes[n])) for n, _ in named}

        grads_iter = fixtures.gradient_stream(config.shapes, config.steps, config.seed, config.grad_scales)
        for step, grads in enumerate(grads_iter):
            for n, p in named:
                p.grad = torch.from_numpy(grads[n].copy()).to(device)
            loss = float(losses[step])
            opt.step(loss=loss) if info.needs_loss else opt.step()
            state = update(state, {n: jnp.asarray(fixtures.to_jax_layout(g)) for n, g in grads.items()},
                           jnp.float32(loss))
            ref_params = lopt.get_params(state)
            result.step_errors.append(0.0)
            for n, p in named:
                ref = fixtures.to_torch_layout(np.asarray(ref_params[n]))
                diff = float(np.max(np.abs(p.detach().to("cpu", torch.float32).numpy() - ref))) if ref.size else 0.0
                if not np.isfinite(diff):  # NaN must never compare as "small"
                    diff = float("inf")
                scale = float(np.max(np.abs(ref))) if ref.size else 0.0
                shape_result = result.shapes[n]
                shape_result.max_abs = max(shape_result.max_abs, diff)
                result.step_errors[-1] = max(result.step_errors[-1], diff)
                shape_result.max_rel = max(shape_result.max_rel, diff / scale if scale > 0 else diff)
                if diff > TOLERANCE and shape_result.first_bad_step is None:
                    shape_result.first_bad_step = step
            if on_step is not None:
                on_step(step)
