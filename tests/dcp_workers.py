"""torch.distributed.checkpoint (DCP) round trips, shared by the single-process test and the ranks it spawns."""

from __future__ import annotations

from pathlib import Path

import torch

from dist_workers import Shapes, process_group, train_shapes, whole_params

BEFORE, AFTER = 3, 3  # steps before the checkpoint, and after it


def save(module, opt, folder: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    dcp.save({"model": get_model_state_dict(module), "optim": get_optimizer_state_dict(module, opt)},
             checkpoint_id=folder)


def load(module, opt, folder: str) -> None:
    """Load ``folder`` into a fresh ``module`` and ``opt``, the DCP way (the state dicts give the layout)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    sd = {"model": get_model_state_dict(module), "optim": get_optimizer_state_dict(module, opt)}
    dcp.load(sd, checkpoint_id=folder)
    set_model_state_dict(module, sd["model"])
    set_optimizer_state_dict(module, opt, sd["optim"])


def continued_steps(module, opt, start: int, steps: int) -> None:
    """``steps`` more steps of :func:`train_shapes`, numbered from ``start`` (the loss depends on it)."""
    for t in range(start, start + steps):
        opt.zero_grad()
        loss = module(t)
        loss.backward()
        opt.step(loss=loss.detach())


def full_optimizer_state(module, opt) -> dict:
    """The optimizer's state gathered whole, keyed by parameter name (every rank gets all of it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    state = get_optimizer_state_dict(module, opt, options=StateDictOptions(full_state_dict=True))["state"]
    return _cloned(state)  # plain tensors in it are the optimizer's own, which later steps change


def _cloned(value):
    if isinstance(value, dict):
        return {k: _cloned(v) for k, v in value.items()}
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def fsdp2_dcp_worker(rank: int, world: int, store: str, out: str, cases) -> None:
    """Per case: FSDP2 training, a DCP checkpoint (``out/<name>``) and the whole optimizer state at that
    point, a fresh FSDP2 run loading it and continuing, and the uninterrupted FSDP2 run; each rank
    saves the whole parameters of both runs."""
    from torch.distributed.fsdp import fully_shard

    from pylo.parity_tests.optim_db import get

    with process_group(rank, world, store):
        saved = {}
        for name, backend in cases:
            folder = str(Path(out) / name)
            module = Shapes()
            fully_shard(module)
            opt = get(name).build(list(module.named_parameters()), run_on=backend)
            train_shapes(module, opt, BEFORE)
            save(module, opt, folder)
            saved[(name, "state")] = full_optimizer_state(module, opt)
            continued_steps(module, opt, BEFORE, AFTER)
            saved[(name, "uninterrupted")] = whole_params(module)
            fresh = Shapes(seed=1)
            fully_shard(fresh)
            opt2 = get(name).build(list(fresh.named_parameters()), run_on=backend)
            load(fresh, opt2, folder)
            continued_steps(fresh, opt2, BEFORE, AFTER)
            saved[(name, backend)] = whole_params(fresh)
        torch.save(saved, Path(out) / f"rank{rank}.pt")
