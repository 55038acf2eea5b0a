"""Trainer recipes: feeding VeLO and Celo the loss when the trainer calls ``optimizer.step()`` bare.

VeLO and Celo read the training loss; most trainers call ``optimizer.step()`` without it. Every recipe
here rests on one rule, :meth:`pylo.optim.base.LearnedOptimizer.accumulate_loss`: record each loss you
call ``backward()`` on; the next step uses their sum, which with gradient accumulation is the mean loss
of one big batch (each micro-batch's loss is divided by the number of micro-batches before
``backward()``). Under DDP the optimizers then average it over the ranks.

* plain loops: ``opt.step(loss)``, or ``opt.accumulate_loss(loss)`` after each ``backward()``;
* ``torch.amp.GradScaler``: ``scaler.step(opt, loss)`` or ``opt.accumulate_loss(loss)`` (the unscaled
  loss) before ``scaler.step(opt)``, then ``opt.zero_grad()`` (which also forgets a skipped step's loss);
* Hugging Face ``transformers.Trainer``: :class:`pylo.integrations.hf.PyloTrainer` (or
  :class:`~pylo.integrations.hf.PyloTrainerMixin` on your own Trainer subclass);
* Lightning: the :class:`pylo.integrations.lightning.PyloLossCallback` callback;
* ``accelerate``: :func:`pylo.integrations.accelerate.backward` in place of ``accelerator.backward``.

A loss-reading optimizer given no loss at all keeps its error; loss-free optimizers ignore the losses.
These modules import their trainer package only when they are imported.
"""

from __future__ import annotations

from typing import Optional

import torch

from pylo.optim.base import LearnedOptimizer, LossLike


def unwrap(optimizer) -> Optional[LearnedOptimizer]:
    """The pylo optimizer inside a trainer's wrapper (accelerate's ``AcceleratedOptimizer``, Lightning's
    ``LightningOptimizer``, which keep it as ``.optimizer``), or ``None`` when there is none."""
    seen = set()
    while optimizer is not None and id(optimizer) not in seen:
        if isinstance(optimizer, LearnedOptimizer):
            return optimizer
        seen.add(id(optimizer))
        optimizer = getattr(optimizer, "optimizer", None)
    return None


def feed_loss(optimizer, loss: LossLike) -> bool:
    """Record ``loss`` on the pylo optimizer inside ``optimizer`` (see ``accumulate_loss``); returns whether
    there was one. Non-pylo optimizers are left alone, so a trainer with several optimizers can call it
    on each."""
    inner = unwrap(optimizer)
    if inner is None:
        return False
    inner.accumulate_loss(loss.detach() if isinstance(loss, torch.Tensor) else loss)
    return True
