"""Hugging Face ``transformers.Trainer`` with pylo optimizers: the loss reaches VeLO and Celo.

``Trainer`` calls ``optimizer.step()`` without the loss. :class:`PyloTrainer` records the loss of every
training step (the one ``Trainer`` calls ``backward()`` on: already divided by
``gradient_accumulation_steps``, or normalised by the tokens of the whole accumulated batch), so the
optimizer sees the mean loss of the accumulated batch. Example::

    from transformers import TrainingArguments
    from pylo.integrations.hf import PyloTrainer
    from pylo.optim import VeLO

    args = TrainingArguments("out", max_steps=1000, lr_scheduler_type="constant")
    opt = VeLO(model.parameters(), num_steps=args.max_steps)
    trainer = PyloTrainer(model=model, args=args, train_dataset=ds, optimizers=(opt, None))
    trainer.train()

``lr_scheduler_type="constant"``: ``Trainer``'s default linear decay would multiply the learned step by
a schedule the optimizer was not meta-trained with (with ``optimizers=(opt, None)`` the schedule
scales the optimizer's own ``lr``; ``learning_rate`` is not used). After a step a ``GradScaler`` skipped
(fp16), ``Trainer`` zeroes the gradients through the model; the recorded losses are forgotten at
every step's end all the same.
"""

from __future__ import annotations

from transformers import Trainer, TrainerCallback

from pylo.integrations import feed_loss, unwrap


class _ForgetRecordedLosses(TrainerCallback):
    """At each step's end (taken or skipped by a ``GradScaler``) the recorded losses are dropped."""

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        inner = unwrap(optimizer)
        if inner is not None:
            inner.clear_accumulated_loss()


class PyloTrainerMixin:
    """Put before ``Trainer`` (or a subclass such as TRL's) in the bases of your own trainer class."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(_ForgetRecordedLosses())

    def training_step(self, model, inputs, *args, **kwargs):
        loss = super().training_step(model, inputs, *args, **kwargs)
        feed_loss(self.optimizer, loss)
        return loss


class PyloTrainer(PyloTrainerMixin, Trainer):
    """``transformers.Trainer`` that feeds each step's loss to a pylo optimizer."""
