"""pylo-convert: convert learned-optimizer checkpoints between upstream JAX and pylo.

    pylo-convert SRC DST --optimizer NAME            JAX (or PyLO hub folder) -> pylo folder
    pylo-convert SRC DST --to jax [--container C]    pylo folder -> upstream flax msgpack
    pylo-convert inspect SRC                         print the tree and what it looks like
    pylo-convert list                                known published checkpoints
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from pylo.converters.convert import CONTAINERS, convert, inspect_source, list_known, to_jax
from pylo.errors import PyloError
from pylo.spec import optimizer_names

OPTIMIZERS = optimizer_names()

EPILOG = """\
inputs (recognised by content):
  flax msgpack   bare theta (celo's theta.state), ParameterCheckpoint {params, gen_id, step}
                 (learned_optimization params files, with config.gin beside them), (theta, '', 0)
                 tuples, legacy namedtuple encoding; read with msgpack + numpy, no JAX needed
  pickle         a pickled theta dict (μLO, scaling_l2o), through a restricted unpickler
  folder         a pylo checkpoint or a published PyLO hub folder (config.json + model.safetensors),
                 or a folder holding theta.state / params

examples:
  pylo-convert inspect ~/ckpt/celo/theta.state
  pylo-convert mulo_theta.pickle ./mulo --optimizer mulo
  pylo-convert ./mulo ./theta.state --to jax
  pylo-convert ./VeLO_RNN ./velo --optimizer velo --mlp ./VeLO_MLP
"""


def _convert_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pylo-convert", description=__doc__.split("\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="pylo-convert SRC DST (--optimizer NAME | --to jax) [options]\n"
                                      "       pylo-convert inspect SRC\n"
                                      "       pylo-convert list")
    p.add_argument("src", metavar="SRC", help="checkpoint to read (file or folder)")
    p.add_argument("dst", metavar="DST", help="folder to write (--to torch) or msgpack file (--to jax)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, type=str.lower,
                   help="which optimizer the checkpoint is for (required for JAX inputs)")
    p.add_argument("--to", choices=("torch", "jax"), default="torch",
                   help="torch: pylo folder (default); jax: upstream flax msgpack")
    p.add_argument("--container", choices=CONTAINERS, default="auto",
                   help="--to jax: top-level layout (auto: the one the checkpoint came from, else bare theta)")
    p.add_argument("--mlp", metavar="FOLDER",
                   help="VeLO's published hub pair: SRC is the VeLO_RNN folder, FOLDER the VeLO_MLP folder; "
                        "DST holds both")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] == "inspect":
            ip = argparse.ArgumentParser(prog="pylo-convert inspect",
                                         description="Print a checkpoint's tree (paths, shapes, dtypes) and "
                                                     "which optimizer it looks like.")
            ip.add_argument("src", metavar="SRC")
            args = ip.parse_args(argv[1:])
            print(inspect_source(args.src))
            return 0
        if argv and argv[0] == "list":
            argparse.ArgumentParser(prog="pylo-convert list",
                                    description="List the known published checkpoints.").parse_args(argv[1:])
            print(list_known())
            return 0
        args = _convert_parser().parse_args(argv)
        if args.to == "jax" and args.mlp:
            _convert_parser().error("--mlp reads VeLO's hub pair into a pylo folder; convert that folder --to jax")
        if args.to == "jax":
            out = to_jax(args.src, args.dst, args.optimizer, container=args.container, overwrite=args.overwrite)
        else:
            if args.optimizer is None:
                _convert_parser().error("--optimizer is required when converting to torch")
            out = convert(args.src, args.dst, args.optimizer, overwrite=args.overwrite, mlp=args.mlp)
        print(f"wrote {out}")
        return 0
    except BrokenPipeError:  # the reader stopped (`pylo-convert inspect ... | head`): exit quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush does not complain
        return 0
    except (PyloError, OSError) as e:
        print(f"pylo-convert: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
