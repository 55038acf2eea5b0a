"""pylo-parity: run the parity suite (torch vs JAX, per step) on the built-in fixtures.

By default a quick set (about a minute on two CPU cores): every optimizer, every parameter shape, on
the backend its recommended class picks on the device, as a user gets it (the full matrix also runs the
fast backends in tiny chunks, so chunk boundaries are exercised). ``--full`` runs the whole matrix: every config
and every backend (where Triton is interpreted, on a CPU, only each optimizer's interpreter subset,
unless ``--backend triton`` asks for it). Prints a table, writes ``parity.json``, ``parity.md`` and an
error-versus-step plot per optimizer (``parity_<optimizer>.png``), and exits with status 1 if any case
exceeds the tolerance or fails to run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import List, Optional

from pylo.parity_tests import registry


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pylo-parity", description=__doc__.split("\n")[0],
        epilog="examples:\n  pylo-parity                 # the quick set\n  pylo-parity --full          # every config and backend"
               "\n  pylo-parity --optimizer adafaclo --backend naive\n  pylo-parity --full --list",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [i.name for i in registry.REGISTRY]
    p.add_argument("--optimizer", action="append", choices=names, help="only this optimizer (repeatable)")
    p.add_argument("--config", action="append", help="only this fixture config (repeatable)")
    p.add_argument("--backend", action="append", help="only this backend (repeatable): naive, foreach, ...")
    p.add_argument("--device", default="cpu", help="where the torch side runs: cpu or cuda (default: %(default)s; "
                   "the triton backend needs cuda, or TRITON_INTERPRET=1 on a CPU)")
    p.add_argument("--out", default="parity_report", help="folder for parity.json and parity.md (default: %(default)s)")
    p.add_argument("--full", action="store_true", help="every config and backend (default: the quick set; "
                   "--config or --backend select from the full matrix too)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    quick = not (args.full or args.config or args.backend)
    interpreted_subset = args.full and not args.backend
    selected = list(registry.cases(args.optimizer, args.config, args.backend, args.device,
                                   interpreter_subset=interpreted_subset, quick=quick))
    if not selected:
        print("pylo-parity: no case matches the selection", file=sys.stderr)
        return 2
    if (not quick and args.device == "cpu" and importlib.util.find_spec("triton") is not None
            and os.environ.get("TRITON_INTERPRET") != "1"):
        print("pylo-parity: Triton cases skipped (no GPU); TRITON_INTERPRET=1 runs them in Triton's interpreter",
              file=sys.stderr)
    if args.list:
        for info, config, backend in selected:
            print(f"{info.name:<10} {config.name:<20} {backend:<8} {config.steps:>4} steps  {config.description}")
        return 0
    skipped = [(info, config, backend, registry.unavailable(config)) for info, config, backend in selected
               if registry.unavailable(config)]
    for info, config, backend, reason in skipped:
        print(f"pylo-parity: skipping {info.name}/{config.name}/{backend}: {reason}", file=sys.stderr)
    selected = [(i, c, b) for i, c, b in selected if not registry.unavailable(c)]
    if not selected:
        print("pylo-parity: every selected case was skipped", file=sys.stderr)
        return 2
    missing = sorted({m for info, _, _ in selected for m in ("jax", "flax", "optax") + info.requires
                      if importlib.util.find_spec(m) is None})
    if missing:
        print(f"pylo-parity: missing {', '.join(missing)}: pip install 'pylo-lopt[jax,mup]'", file=sys.stderr)
        return 2

    from tqdm import tqdm

    from pylo.parity_tests.pipeline import run_case
    from pylo.parity_tests.report import table, write

    results = []
    total = sum(config.steps for _, config, _ in selected)
    with tqdm(total=total, unit="step", disable=args.no_progress, file=sys.stderr) as bar:
        for info, config, backend in selected:
            bar.set_description(f"{info.name}/{config.name}/{backend}")
            results.append(run_case(info, config, backend, on_step=lambda _: bar.update(1), device=args.device,
                                    small_chunks=not quick))
    print(table(results))
    paths = write(results, args.out)
    failed = [r for r in results if not r.passed]
    plots = [str(v) for k, v in paths.items() if k.startswith("plot_")]
    print(f"\n{len(results) - len(failed)}/{len(results)} cases passed; reports: {paths['json']}, {paths['markdown']}"
          + (f"; plots: {', '.join(plots)}" if plots else ""))
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
