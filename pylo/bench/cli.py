"""pylo-bench: optimizer step time and memory for every optimizer and backend.

For each workload it measures, per optimizer and backend: the median step time
(gradients fixed, warm-up excluded), the peak transient memory of one step (with the
scratch buffers a fast backend keeps for reuse), and
the persistent state per parameter; beside torch.optim.AdamW (foreach and fused)
on the same parameters and, when JAX is installed, our JAX reference compiled
with jax.jit on the same device. It prints ratios (to fused AdamW, to the naive
backend, to JAX), the float32 matmul floor (per-element MLPs, and Newton-Schulz
for the CELO2 family), and writes
bench.json, bench.md and (with matplotlib) bench.png. Benchmarks are never tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch

from pylo.bench import measure, workloads
from pylo.parity_tests import optim_db


@dataclass
class Row:
    workload: str
    optimizer: str
    backend: str
    params: int
    median_ms: float
    transient_bytes_per_param: Optional[float] = None
    state_bytes_per_param: Optional[float] = None
    vs_adamw: Optional[float] = None
    vs_naive: Optional[float] = None
    vs_jax: Optional[float] = None
    error: Optional[str] = None


def _make_params(shapes, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = []
    for _, shape in shapes:
        p = torch.nn.Parameter((0.02 * torch.randn(shape, generator=gen)).to(device))
        p.grad = (1e-3 * torch.randn(shape, generator=gen)).to(device)
        params.append(p)
    return params


def _measure_torch(make_opt, shapes, device, warmup, iters, loss) -> Dict:
    params = _make_params(shapes, device)
    named = [(name, p) for (name, _), p in zip(shapes, params)]
    opt = make_opt(named)
    step = (lambda: opt.step(loss=loss)) if loss is not None else opt.step
    seconds = measure.median_seconds(step, device, warmup, iters)
    n = workloads.numel(shapes)
    return {"median_ms": 1e3 * seconds,
            "transient_bytes_per_param": (measure.peak_transient_bytes(step, device)
                                          + measure.workspace_bytes(opt)) / n,
            "state_bytes_per_param": measure.state_bytes(opt) / n}


def _measure_jax(info, shapes, warmup, iters) -> float:
    """The JAX reference of ``info`` (its parity registry entry's first config), compiled with ``jax.jit``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from pylo.parity_tests import registry
    from pylo.parity_tests.fixtures import to_jax_layout

    parity = registry.get(info.name)
    config = parity.configs[0]
    reference = parity.make_reference(config)
    lopt = reference.opt_fn(reference.init(jax.random.PRNGKey(0)))
    rng = np.random.default_rng(0)
    params = {n: jnp.asarray(to_jax_layout((0.02 * rng.standard_normal(s)).astype(np.float32))) for n, s in shapes}
    grads = {n: jnp.asarray(to_jax_layout((1e-3 * rng.standard_normal(s)).astype(np.float32))) for n, s in shapes}
    state = lopt.init(params, num_steps=config.num_steps)
    update = jax.jit(lambda s, g: lopt.update(s, g, loss=jnp.float32(1.0)))
    holder = {"state": state}

    def step():
        holder["state"] = jax.block_until_ready(update(holder["state"], grads))

    with jax.default_matmul_precision("highest"):
        return 1e3 * measure.median_seconds(step, torch.device("cpu"), warmup, iters)


def mlp_flops_per_element(network: torch.nn.Module) -> int:
    """Multiply-adds x 2 of the per-element MLP (the unavoidable arithmetic).

    A network that is not built from ``nn.Linear`` layers says so itself (``flops_per_element()``).
    """
    own = getattr(network, "flops_per_element", None)
    if callable(own):
        return int(own())
    return sum(2 * m.in_features * m.out_features for m in network.modules() if isinstance(m, torch.nn.Linear))


def orthogonalize_flops(info, shapes) -> int:
    """Newton-Schulz flops of one step for optimizers that orthogonalise (CELO2 family), else 0.

    Only parameters the optimizer's own routing (``routes_to_adamw``) keeps on the learned path
    are orthogonalised; the rest take AdamW.
    """
    import inspect

    from pylo.core.orthogonalize import newton_schulz_flops

    parameter = inspect.signature(info.naive).parameters.get("orthogonalize")
    if not info.bench_kwargs.get("orthogonalize", parameter is not None and parameter.default is True):
        return 0
    group = {"use_adamw_for_1d": info.bench_kwargs.get("use_adamw_for_1d", True)}
    return sum(newton_schulz_flops(shape) for name, shape in shapes
               if not info.naive.routes_to_adamw(group, torch.empty(shape, device="meta"), name))


def run(workload_shapes: Dict[str, list], optimizers: List[str], backends: Optional[List[str]], device,
        warmup: int, iters: int, with_jax: bool, log=print) -> Dict:
    infos = [i for i in optim_db.DATABASE if i.make_network is not None and (not optimizers or i.name in optimizers)]
    rows: List[Row] = []
    floors = {}
    skipped = set()
    gflops = measure.sgemm_gflops(device)
    for wname, shapes in workload_shapes.items():
        n = workloads.numel(shapes)
        base = {}
        for label, kwargs in (("foreach", {"foreach": True}), ("fused", {"fused": True})):
            try:
                res = _measure_torch(lambda named, kw=kwargs: torch.optim.AdamW([p for _, p in named], **kw),
                                     shapes, device, warmup, iters, None)
                rows.append(Row(wname, "AdamW", label, n, **res))
                base[label] = res["median_ms"]
            except (RuntimeError, TypeError) as e:  # fused AdamW may not exist for a device
                rows.append(Row(wname, "AdamW", label, n, float("nan"), error=str(e).splitlines()[0]))
        adamw_ms = base.get("fused", base.get("foreach"))
        for info in infos:
            net = info.make_network()
            flops = n * mlp_flops_per_element(net) + orthogonalize_flops(info, shapes)
            floors[(wname, info.name)] = 1e3 * flops / (gflops * 1e9)
            jax_ms = None
            if with_jax:
                try:
                    jax_ms = _measure_jax(info, shapes, warmup, iters)
                    rows.append(Row(wname, info.name, "jax-jit", n, jax_ms, vs_adamw=jax_ms / adamw_ms))
                except Exception as e:  # report, do not abort the whole benchmark
                    rows.append(Row(wname, info.name, "jax-jit", n, float("nan"), error=str(e).splitlines()[0]))
            naive_ms = None
            for backend in info.backends:
                if backends and backend not in backends:
                    continue
                if not optim_db.backend_available(backend, str(device)):
                    skipped.add(f"{backend} (needs CUDA and triton)")
                    continue
                log(f"  {wname}: {info.name}/{backend}")
                kwargs = {**info.bench_kwargs, **info.backend_kwargs(backend)}
                make = lambda named, kw=kwargs, info=info, net=net: info.naive(named, network=net, **kw)  # noqa: E731
                try:
                    res = _measure_torch(make, shapes, device, warmup, iters, 1.0 if info.needs_loss else None)
                except Exception as e:
                    rows.append(Row(wname, info.name, backend, n, float("nan"), error=str(e).splitlines()[0]))
                    continue
                ms = res["median_ms"]
                if backend == "naive":
                    naive_ms = ms
                rows.append(Row(wname, info.name, backend, n, **res, vs_adamw=ms / adamw_ms,
                                vs_naive=None if naive_ms is None else naive_ms / ms,
                                vs_jax=None if jax_ms is None else jax_ms / ms))
    return {"device": str(device), "sgemm_gflops": gflops, "rows": [asdict(r) for r in rows],
            "mlp_floor_ms": {f"{w}/{o}": v for (w, o), v in floors.items()}, "skipped": sorted(skipped),
            "environment": _environment()}


def _environment() -> Dict[str, str]:
    env = {"python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor(),
           "torch": torch.__version__, "threads": str(torch.get_num_threads())}
    if importlib.util.find_spec("jax"):
        import jax

        env["jax"] = jax.__version__
    return env


def _fmt(x, spec):
    return "—" if x is None or x != x else format(x, spec)


def table(result: Dict) -> str:
    head = ("workload", "optimizer", "backend", "ms/step", "x AdamW", "naive/this", "jax/this", "transient B/p",
            "state B/p")
    rows = [head] + [(r["workload"], r["optimizer"], r["backend"], _fmt(r["median_ms"], ".1f"),
                      _fmt(r["vs_adamw"], ".1f"), _fmt(r["vs_naive"], ".2f"), _fmt(r["vs_jax"], ".2f"),
                      _fmt(r["transient_bytes_per_param"], ".1f"), _fmt(r["state_bytes_per_param"], ".1f"))
                     for r in result["rows"]]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"\nfloat32 matmul: {result['sgemm_gflops']:.0f} GFLOP/s on {result['device']}; "
                 "matmul floor (per-element MLP + Newton-Schulz): " + ", ".join(f"{k} {v:.1f} ms" for k, v in result["mlp_floor_ms"].items()))
    if result.get("skipped"):
        lines.append(f"not run on {result['device']}: " + ", ".join(result["skipped"]))
    errors = [f"{r['workload']}/{r['optimizer']}/{r['backend']}: {r['error']}" for r in result["rows"] if r["error"]]
    return "\n".join(lines + ([""] + errors if errors else []))


def markdown(result: Dict) -> str:
    lines = table(result).splitlines()
    out = ["# pylo-bench", "", "```", *lines, "```", "", "## Environment", ""]
    out += [f"- {k}: {v}" for k, v in result["environment"].items()]
    return "\n".join(out) + "\n"


def plot(result: Dict, path: Path) -> Optional[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = sorted({r["workload"] for r in result["rows"]})
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
    for ax, w in zip(axes[0], names):
        rows = [r for r in result["rows"] if r["workload"] == w and r["median_ms"] == r["median_ms"]]
        ax.barh([f"{r['optimizer']}/{r['backend']}" for r in rows], [r["median_ms"] for r in rows])
        ax.set_xscale("log")
        ax.set_xlabel("ms per step (log)")
        ax.set_title(f"{w} ({rows[0]['params'] / 1e6:.1f} M params)" if rows else w)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _parser():
    p = argparse.ArgumentParser(prog="pylo-bench", description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1] + "\nexamples:\n  pylo-bench\n"
                                       "  pylo-bench --workload mlp --optimizer adafaclo --backend fused\n"
                                       "  pylo-bench --shapes 4096x4096,4096 --iters 5\n"
                                       "  taskset -c 0 pylo-bench --threads 1   # one core, torch and XLA alike",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", action="append", choices=sorted(workloads.WORKLOADS),
                   help="built-in workload (repeatable; default: mlp and transformer)")
    p.add_argument("--shapes", help="a custom workload: shapes like 1024x1024,512")
    p.add_argument("--optimizer", action="append", help="only this optimizer (repeatable)")
    p.add_argument("--backend", action="append", help="only this backend (repeatable)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=7)
    p.add_argument("--no-jax", action="store_true", help="skip the JAX reference")
    p.add_argument("--threads", type=int, help="CPU threads for torch (1 also makes XLA single-threaded; default: the libraries' own)")
    p.add_argument("--out", default="bench_report", help="folder for bench.json/.md/.png")
    p.add_argument("--distributed", action="store_true",
                   help="instead: the bytes each optimizer's step moves per rank under FSDP2 (CPU ranks on this "
                        "machine, gloo), beside FSDP2's own all-gather and gradient reduce-scatter "
                        "(default workload: mlp); writes distributed.json")
    p.add_argument("--world", type=int, default=2, help="ranks for --distributed (default: %(default)s)")
    return p


def _main_distributed(args, shapes) -> int:
    from pylo.bench import distributed

    if args.world < 2:
        print("pylo-bench: --world must be >= 2", file=sys.stderr)
        return 2
    names = [i.name for i in optim_db.DATABASE if i.make_network is not None and i.name != "mulo"
             and (not args.optimizer or i.name in args.optimizer)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for workload, named in shapes.items():
        print(f"  {workload}: {len(names)} optimizers on {args.world} ranks", file=sys.stderr)
        results.append(distributed.run(workload, named, names, (args.backend or ["fused"])[0], args.world))
        print(distributed.table(results[-1]) + "\n")
    (out / "distributed.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'distributed.json'}")
    return 0


def set_threads(n: int) -> None:
    """Set torch's CPU threads; with ``n == 1`` also make XLA single-threaded, so one-core ratios compare
    like with like (XLA has no flag for other counts: pin cores with ``taskset``).

    XLA reads its flags when JAX first initialises its CPU backend, so this must run before that.
    """
    if n < 1:
        raise ValueError(f"--threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    flags = os.environ.get("XLA_FLAGS", "")
    if n == 1 and "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1".strip()


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("pylo-bench: CUDA requested but not available", file=sys.stderr)
        return 2
    try:
        shapes = {"custom": workloads.parse_shapes(args.shapes)} if args.shapes else {}
    except ValueError as e:
        print(f"pylo-bench: {e}", file=sys.stderr)
        return 2
    default = ("mlp",) if args.distributed else workloads.DEFAULT_WORKLOADS
    for name in args.workload or ([] if shapes else default):
        shapes[name] = workloads.WORKLOADS[name]()
    if args.distributed:
        return _main_distributed(args, shapes)
    if args.threads is not None:
        try:
            set_threads(args.threads)
        except ValueError as e:
            print(f"pylo-bench: {e}", file=sys.stderr)
            return 2
    with_jax = not args.no_jax and importlib.util.find_spec("jax") is not None
    result = run(shapes, args.optimizer or [], args.backend, device, args.warmup, args.iters, with_jax,
                 log=lambda msg: print(msg, file=sys.stderr))
    print(table(result))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(result))
    png = plot(result, out / "bench.png")
    print(f"\nwrote {out / 'bench.json'}, {out / 'bench.md'}" + (f", {png}" if png else " (no matplotlib: no plot)"))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
