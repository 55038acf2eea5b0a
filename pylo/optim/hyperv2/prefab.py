"""What sits around the HyperV2 update: the loss the LSTM reads and learned_optimization's prefab wrappers.

``learned_optimization/research/general_lopt/prefab.py`` wraps VeLO in a weight-decay wrapper
(``g + wd * p``, and ``wd * sum(p^2)`` added to the loss the LSTM sees) and, for runs longer than
``max_training_steps``, a gradient accumulator that averages consecutive calls into one update.
The loss itself must be a real scalar; under ``torch.distributed`` it can be averaged over ranks.
"""

from __future__ import annotations

import math
import numbers
from typing import Dict, List, Optional, Tuple

import torch

from pylo.core import reduce
from pylo.optim.sharded import local_tensor

def missing_loss(name: str) -> TypeError:
    return TypeError(f"{name}.step() needs the training loss: its LSTM reads the loss history. "
                     "Call opt.step(loss) (a tensor or a float) or opt.step(closure) with a closure that "
                     "returns the loss, or record it with opt.accumulate_loss(loss) after backward(); trainers "
                     "that call opt.step() bare have a recipe in pylo.integrations (HF Trainer, Lightning, "
                     "accelerate, GradScaler)")

def loss_tensor(loss, device: torch.device, name: str, all_reduce: Optional[bool] = False) -> torch.Tensor:
    """The loss as a float32 0-d tensor on ``device``, averaged over ranks when ``all_reduce`` (``None``:
    when a process group of more than one rank is initialised)."""
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise ValueError(f"{name}.step() needs a scalar loss, got a tensor of shape "
                             f"{tuple(loss.shape)} (reduce it first, e.g. loss.mean())")
        if loss.is_complex():
            raise ValueError(f"{name}.step() needs a real loss, got {loss.dtype}")
        loss_t = loss.detach().reshape(()).to(device=device, dtype=torch.float32)
    elif isinstance(loss, numbers.Real) and not isinstance(loss, bool):
        loss_t = torch.tensor(float(loss), dtype=torch.float32, device=device)
    else:
        raise TypeError(f"{name}.step() takes the loss as a tensor or a float, got {type(loss).__name__}")
    if all_reduce or (all_reduce is None and world_size() > 1):
        loss_t = all_reduce_mean(loss_t)
    return loss_t

def check_loss(loss_t: torch.Tensor, name: str) -> None:
    value = float(loss_t)
    if not math.isfinite(value):
        raise ValueError(f"{name}: the loss is not finite ({value}): step not taken, parameters "
                         "and optimizer state unchanged")

def weight_decay(items, grads: List[torch.Tensor], loss_t: torch.Tensor, splits: Optional[List] = None
                 ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """learned_optimization's ``WeightDecayWrapper``: ``g + wd*p`` and ``loss + sum(wd * sum(p^2))``
    (``splits``: which parameters are one rank's part of a sharded tensor; their sums cover all ranks)."""
    out, squares = [], []
    for (group, p, _), g in zip(items, grads):
        wd = group["weight_decay"]
        pf = local_tensor(p).detach().to(torch.float32)
        out.append(g + wd * pf if wd else g)
        squares.append(reduce.sum_squares(pf))
    if splits is not None:
        squares = reduce.all_reduce_leaves(squares, splits)
    penalty = None
    for (group, _, _), sq in zip(items, squares):
        term = sq.to(loss_t.device) * group["weight_decay"]
        penalty = term if penalty is None else penalty + term
    return loss_t + penalty, out

def accumulate(state: Dict, param_groups, items, loss_t: torch.Tensor, global_state: Dict, num_average: int):
    """prefab's ``GradientAccumulator``: add this call's gradients (``state[p]["grad_accum"]``) and loss.

    Returns ``(loss_accum, micro_step, ready)``: what the global state keeps, and ``None`` until
    ``num_average`` calls are summed, then ``(items, loss)``: the mean gradients of every
    parameter with an accumulator, in param-group order, and the mean loss.
    """
    for _, p, g in items:
        st = state[p]
        if "grad_accum" in st:
            st["grad_accum"].add_(g)
        else:
            st["grad_accum"] = g.clone()
    previous = global_state["loss_accum"]
    loss_accum = loss_t if previous is None else previous.to(loss_t.device) + loss_t
    micro_step = global_state["micro_step"] + 1
    if micro_step % num_average:
        return loss_accum, micro_step, None
    ready = []
    for group in param_groups:
        for p in group["params"]:
            st = state.get(p)
            if st and "grad_accum" in st:
                ready.append((group, p, st.pop("grad_accum") / num_average))
    return None, micro_step, (ready, loss_accum / num_average)

def world_size() -> int:
    """Ranks of the initialised default process group (1 when there is none)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over all ranks when ``torch.distributed`` is initialised, else ``value``."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    out = value.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()
