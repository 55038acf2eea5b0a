"""What both examples share: the command line, building each optimizer by name, the training loop,
the figure and the results tables (``results.md`` + ``results.json``).

An example describes itself as a :class:`Task` (a seeded model, a batch sampler, a loss and an
evaluation) and hands it to :func:`main`; every optimizer then trains the same model from the same
initialisation on the same batches.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from pylo.errors import CheckpointError, HubUnavailableError
from pylo.optim.base import NonFiniteGradientError
from pylo.spec import OPTIMIZERS

#: every optimizer an example can train: the AdamW baseline, then pylo's in the order pylo lists them
OPTIMIZER_CHOICES: Tuple[str, ...] = ("adamw", *OPTIMIZERS)

#: how to get weights that are not published as a pylo folder on the hub
CELO_HINT = ("Celo's weights are published as a JAX checkpoint: convert them with `pylo-convert "
             "theta.state ./celo --optimizer celo` and pass --checkpoint celo=./celo")


class NoWeights(Exception):
    """A learned optimizer whose meta-network is neither on disk (``--checkpoint``) nor reachable on the hub."""


@dataclass
class Task:
    """One example problem. ``make_model()`` is called under a fixed seed; ``batch(generator)`` draws a
    training batch; ``loss(model, batch)`` is the training loss; ``evaluate(model)`` returns the metrics
    recorded on the curves (its keys become ``final_<key>`` in the results)."""

    name: str
    make_model: Callable[[], torch.nn.Module]
    batch: Callable[[torch.Generator], Tuple[torch.Tensor, ...]]
    loss: Callable[[torch.nn.Module, Tuple[torch.Tensor, ...]], torch.Tensor]
    evaluate: Callable[[torch.nn.Module], Dict[str, float]]
    details: Dict[str, object] = field(default_factory=dict)


@dataclass
class Panel:
    """One axes of the figure: ``lines`` are ``(curve key, line style, legend suffix)``; the key
    ``batch_loss`` is the per-step training loss (smoothed), any other an evaluation metric."""

    title: str
    ylabel: str
    lines: Sequence[Tuple[str, str, str]]
    logy: bool = False


# ----------------------------------------------------------------------------- command line
def parse_checkpoint(text: str) -> Tuple[str, Path]:
    """``NAME=PATH`` (``--checkpoint celo=./celo``) -> ``("celo", Path("./celo"))``."""
    name, sep, path = text.partition("=")
    name = name.strip().lower()
    if not sep or not path.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    if name not in OPTIMIZERS:
        raise argparse.ArgumentTypeError(f"no learned optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    return name, Path(path.strip()).expanduser()


def parse_optimizers(text: str) -> List[str]:
    """``adamw,celo`` -> ``["adamw", "celo"]``; ``all`` is every choice."""
    names = list(OPTIMIZER_CHOICES) if text.strip() == "all" else [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in OPTIMIZER_CHOICES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown optimizer(s) {unknown or text!r}; choose from "
                                         f"{', '.join(OPTIMIZER_CHOICES)} or 'all'")
    return list(dict.fromkeys(names))


def make_parser(doc: str, steps: int, out: str, adamw_lr: float) -> argparse.ArgumentParser:
    """The options every example takes; ``doc`` (the script's docstring) is the ``--help`` text."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=steps,
                        help=f"training steps per optimizer, also VeLO's and Celo's num_steps (default {steps})")
    parser.add_argument("--optimizers", type=parse_optimizers, default=list(OPTIMIZER_CHOICES),
                        help="comma-separated list from " + ", ".join(OPTIMIZER_CHOICES)
                        + "; default all (learned optimizers without weights are reported as skipped)")
    parser.add_argument("--checkpoint", type=parse_checkpoint, action="append", default=[], metavar="NAME=PATH",
                        help="a pylo checkpoint folder for a learned optimizer (written by pylo-convert), e.g. "
                        "celo=./celo; repeatable. Without one, the optimizer's weights come from the hub (Celo "
                        "needs one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data split, the model and the batches")
    parser.add_argument("--adamw-lr", type=float, default=adamw_lr, help=f"AdamW's learning rate (default {adamw_lr:g})")
    parser.add_argument("--eval-every", type=int, default=None, help="steps between evaluations (default steps/20)")
    parser.add_argument("--out", type=Path, default=Path(out), help=f"output folder (default {out})")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parsed options, checked beyond what argparse checks."""
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.eval_every is not None and args.eval_every < 1:
        parser.error("--eval-every must be at least 1")
    if not args.adamw_lr > 0:
        parser.error("--adamw-lr must be positive")
    for name, path in args.checkpoint:
        if not path.exists():
            parser.error(f"--checkpoint {name}={path}: no such file or folder")
    args.checkpoints = dict(args.checkpoint)
    return args


# ----------------------------------------------------------------------------- optimizers
def build_optimizer(name: str, model: torch.nn.Module, steps: int, checkpoints: Dict[str, Path],
                    adamw_lr: float) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``model``'s parameters; :class:`NoWeights` where its weights are not at hand.

    Learned optimizers keep their defaults (``lr=1.0`` for VeLO and Celo is the step they were
    meta-trained with); VeLO and Celo are told the real training length (``num_steps``).
    """
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=adamw_lr)
    import pylo.optim

    spec = OPTIMIZERS[name]
    kwargs: Dict[str, object] = {"num_steps": steps} if spec.needs_loss else {}
    if name in checkpoints:
        kwargs["checkpoint_path"] = str(checkpoints[name])
    elif name == "celo":
        raise NoWeights(CELO_HINT)
    if name == "mulo":  # μP base shapes of the model itself: every width multiplier is 1
        import mup

        mup.set_base_shapes(model, None, rescale_params=False, do_assert=False)
    try:
        return getattr(pylo.optim, spec.classes[0])(model.named_parameters(), **kwargs)
    except (HubUnavailableError, CheckpointError) as e:
        if "checkpoint_path" in kwargs:  # the user's own folder is wrong: that is an error, not a skip
            raise SystemExit(f"--checkpoint {name}={checkpoints[name]}: {e}") from None
        reason = "the hub is unreachable" if isinstance(e, HubUnavailableError) else str(e).splitlines()[0]
        raise NoWeights(f"{reason}; pass --checkpoint {name}=PATH") from None


def needs_loss(name: str) -> bool:
    """VeLO and Celo read the loss: ``opt.step(loss)``."""
    return name in OPTIMIZERS and OPTIMIZERS[name].needs_loss


# ----------------------------------------------------------------------------- training
def eval_steps(steps: int, every: Optional[int]) -> List[int]:
    """The steps after which the model is evaluated: 0, every ``every`` (default steps/20), and the last."""
    every = every or max(1, steps // 20)
    return sorted({*range(0, steps, every), steps})


def train_one(task: Task, name: str, args: argparse.Namespace) -> Dict[str, object]:
    """Train ``task``'s model with optimizer ``name``; the run's record (status, curves, final metrics, time)."""
    torch.manual_seed(args.seed)
    model = task.make_model()
    try:
        opt = build_optimizer(name, model, args.steps, args.checkpoints, args.adamw_lr)
    except NoWeights as e:
        return {"status": "skipped", "reason": f"no weights: {e}"}
    generator = torch.Generator().manual_seed(args.seed + 1)
    curves: Dict[str, list] = {"batch_loss": [], "eval_step": []}
    record = {"status": "ok", "curves": curves}
    seconds, evals = 0.0, set(eval_steps(args.steps, args.eval_every))
    for step in range(args.steps + 1):
        if step in evals:
            _record_eval(curves, step, task.evaluate(model))
        if step == args.steps:
            break
        start = time.perf_counter()
        try:
            loss = _train_step(task, model, opt, generator, needs_loss(name))
        except NonFiniteGradientError as e:
            record.update(status="diverged", reason=str(e).splitlines()[0])
            break
        seconds += time.perf_counter() - start
        curves["batch_loss"].append(loss)
        if not math.isfinite(loss):
            record.update(status="diverged", reason=f"loss {loss} at step {step}")
            break
    record["wall_time_s"] = seconds
    record.update({f"final_{k}": v[-1] for k, v in curves.items() if k not in ("batch_loss", "eval_step")})
    return record


def _train_step(task: Task, model: torch.nn.Module, opt: torch.optim.Optimizer, generator: torch.Generator,
                with_loss: bool) -> float:
    model.train()
    loss = task.loss(model, task.batch(generator))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if with_loss:
        opt.step(loss)
    else:
        opt.step()
    return loss.item()


def _record_eval(curves: Dict[str, list], step: int, metrics: Dict[str, float]) -> None:
    curves["eval_step"].append(step)
    for key, value in metrics.items():
        curves.setdefault(key, []).append(float(value))


def run(task: Task, args: argparse.Namespace) -> Dict[str, Dict[str, object]]:
    """Every requested optimizer on ``task``, one after the other, with a line of progress each."""
    results = {}
    for name in args.optimizers:
        print(f"[{task.name}] {name}: training {args.steps} steps ...", flush=True)
        results[name] = rec = train_one(task, name, args)
        print(f"[{task.name}] {name}: {summary_line(rec)}", flush=True)
    return results


def summary_line(rec: Dict[str, object]) -> str:
    """``ok: final_train_loss=0.0123 ... (4.2 s)`` or ``skipped: no weights: ...``."""
    if rec["status"] == "skipped":
        return f"skipped: {rec['reason']}"
    finals = " ".join(f"{k}={v:.4g}" for k, v in rec.items() if k.startswith("final_"))
    return f"{rec['status']}: {finals} ({rec['wall_time_s']:.1f} s)"


# ----------------------------------------------------------------------------- outputs
def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as an ordinary file would be (mkstemp makes it 0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def smooth(values: Sequence[float], window: int) -> Tuple[List[int], List[float]]:
    """Trailing moving average: ``(steps, means)``, step ``i + 1`` averaging values up to ``i``."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return list(range(1, len(values) + 1)), out


def plot(results: Dict[str, Dict[str, object]], panels: Sequence[Panel], path: Path, title: str) -> None:
    """One PNG: a row of ``panels``, a coloured line (or several styles) per trained optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    trained = [(n, r) for n, r in results.items() if r["status"] != "skipped"]
    for ax, panel in zip(axes[0], panels):
        for index, (name, rec) in enumerate(trained):
            for key, style, suffix in panel.lines:
                xs, ys = _series(rec["curves"], key)
                ax.plot(xs, ys, style, color=f"C{index}", label=f"{name}{suffix}", linewidth=1.4, markersize=3)
        ax.set(title=panel.title, xlabel="step", ylabel=panel.ylabel)
        if panel.logy:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _series(curves: Dict[str, list], key: str) -> Tuple[list, list]:
    if key == "batch_loss":
        losses = curves["batch_loss"]
        return smooth(losses, max(1, len(losses) // 50))
    return curves["eval_step"][:len(curves[key])], curves[key]


def settings(task: Task, args: argparse.Namespace) -> Dict[str, object]:
    """What the results depend on: the options, the task's own details, the versions and threads."""
    return {"task": task.name, "steps": args.steps, "seed": args.seed, "adamw_lr": args.adamw_lr,
            "adamw": f"torch.optim.AdamW(lr={args.adamw_lr:g}), other defaults",
            "learned_optimizers": "pylo defaults; VeLO/Celo num_steps=steps",
            "checkpoints": {k: str(v) for k, v in args.checkpoints.items()}, **task.details,
            "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads()}


def write_results(results: Dict[str, Dict[str, object]], info: Dict[str, object],
                  columns: Sequence[Tuple[str, str, str]], out: Path, figure: str) -> None:
    """``out/results.json`` (settings, every run with its curves) and ``out/results.md`` (a table of
    ``columns``: header, result key, format)."""
    document = {"settings": info, "optimizers": results}
    atomic_write(out / "results.json", lambda tmp: tmp.write_text(json.dumps(document, indent=1) + "\n"))
    atomic_write(out / "results.md", lambda tmp: tmp.write_text(results_markdown(results, info, columns, figure)))


def results_markdown(results: Dict[str, Dict[str, object]], info: Dict[str, object],
                     columns: Sequence[Tuple[str, str, str]], figure: str) -> str:
    """The table of results, with the settings below it and the figure linked."""
    head = ["optimizer", *(c[0] for c in columns), "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rec in results.items():
        cells = [("{:" + fmt + "}").format(rec[key]) if key in rec else "–" for _, key, fmt in columns]
        status = rec["status"] if rec["status"] == "ok" else f"{rec['status']}: {rec['reason']}"
        lines.append("| " + " | ".join([name, *cells, status.replace("|", "/")]) + " |")
    described = ", ".join(f"{k}={v}" for k, v in info.items() if k != "checkpoints")
    return (f"# {info['task']}: results\n\n" + "\n".join(lines) + f"\n\nSettings: {described}.\n"
            "Wall time is the time spent in training steps (forward, backward, optimizer step), "
            f"evaluations excluded.\n\n![curves]({figure})\n")


def main(task: Task, args: argparse.Namespace, panels: Sequence[Panel],
         columns: Sequence[Tuple[str, str, str]]) -> Dict[str, Dict[str, object]]:
    """Train every requested optimizer on ``task``; write ``<task>.png``, ``results.md`` and ``results.json``."""
    results = run(task, args)
    figure = f"{task.name}.png"
    written = [args.out / "results.md", args.out / "results.json"]
    if any(r["status"] != "skipped" for r in results.values()):
        plot(results, panels, args.out / figure, f"{task.name}: {args.steps} steps, seed {args.seed}")
        written.append(args.out / figure)
    write_results(results, settings(task, args), columns, args.out, figure)
    print("wrote " + ", ".join(map(str, written)))
    return results
