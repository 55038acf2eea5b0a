"""Parity results as a console table, JSON and Markdown."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Dict, List

from pylo.parity_tests.pipeline import CaseResult

COLUMNS = ("optimizer", "config", "backend", "shapes", "steps", "max abs err", "max rel err", "result")


def _row(r: CaseResult) -> List[str]:
    status = "PASS" if r.passed else ("ERROR" if r.error else "FAIL")
    return [r.optimizer, r.config, r.backend, str(len(r.shapes)), str(r.steps), f"{r.max_abs:.2e}",
            f"{r.max_rel:.2e}", status]


def table(results: List[CaseResult]) -> str:
    rows = [list(COLUMNS)] + [_row(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    fmt = lambda row: "  ".join(cell.ljust(w) for cell, w in zip(row, widths))  # noqa: E731
    lines = [fmt(rows[0]), "  ".join("-" * w for w in widths)] + [fmt(row) for row in rows[1:]]
    for r in results:
        if r.error:
            lines.append(f"\n{r.optimizer}/{r.config}/{r.backend} raised:\n{r.error}")
        elif not r.passed:
            bad = [f"{n} {tuple(s.shape)} {s.max_abs:.2e} (first at step {s.first_bad_step})"
                   for n, s in r.shapes.items() if s.max_abs > r.tolerance]
            lines.append(f"\n{r.optimizer}/{r.config}/{r.backend} over tolerance: " + "; ".join(bad))
    return "\n".join(lines)


def environment() -> Dict[str, str]:
    import numpy
    import torch

    env = {"python": platform.python_version(), "machine": platform.machine(), "torch": torch.__version__,
           "numpy": numpy.__version__}
    try:
        import jax

        env["jax"] = jax.__version__
        env["jax_backend"] = jax.default_backend()
    except ImportError:
        pass
    return env


def markdown(results: List[CaseResult]) -> str:
    lines = ["# pylo parity report", "",
             f"Tolerance: max |param_torch - param_jax| <= {results[0].tolerance if results else 1e-6:g} "
             "after every step (float32).", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in results]
    lines += ["", "## Per shape (max abs error over all steps)", ""]
    for r in results:
        lines.append(f"### {r.optimizer} / {r.config} / {r.backend}")
        lines.append(f"{r.description}. {r.steps} steps, {r.seconds:.1f} s.")
        lines.append("")
        if r.error:
            lines += ["```", r.error.rstrip(), "```", ""]
            continue
        lines += ["| tensor | shape (torch) | max abs err | max rel err |", "|---|---|---|---|"]
        lines += [f"| {n} | {tuple(s.shape)} | {s.max_abs:.2e} | {s.max_rel:.2e} |" for n, s in r.shapes.items()]
        lines.append("")
    lines += ["## Environment", ""] + [f"- {k}: {v}" for k, v in environment().items()]
    return "\n".join(lines) + "\n"


def write(results: List[CaseResult], out_dir) -> Dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"passed": all(r.passed for r in results), "environment": environment(),
               "cases": [r.to_dict() for r in results]}
    paths = {"json": out / "parity.json", "markdown": out / "parity.md"}
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n")
    paths["markdown"].write_text(markdown(results))
    paths.update(plot(results, out))
    return paths


#: errors are drawn on a log axis; exact agreement (0) is drawn at this floor
PLOT_FLOOR = 1e-10


def plot(results: List[CaseResult], out: Path) -> Dict[str, Path]:
    """One PNG per optimizer, ``parity_<optimizer>.png``: max |error| versus step for each of its cases,
    with the tolerance (nothing without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    paths = {}
    for name in dict.fromkeys(r.optimizer for r in results):
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        for r in (r for r in results if r.optimizer == name and r.step_errors):
            ax.plot(range(1, len(r.step_errors) + 1), [max(e, PLOT_FLOOR) for e in r.step_errors],
                    label=f"{r.config} / {r.backend}", linewidth=1)
        ax.axhline(results[0].tolerance, color="red", linestyle="--", linewidth=1, label="tolerance")
        ax.set(yscale="log", xlabel="step", ylabel="max |torch - JAX|", title=f"{name}: torch vs JAX per step")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        paths[f"plot_{name}"] = out / f"parity_{name}.png"
        fig.savefig(paths[f"plot_{name}"], dpi=100)
        plt.close(fig)
    return paths
