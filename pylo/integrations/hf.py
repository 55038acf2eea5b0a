"""Hugging Face ``transformers.Trainer`` with pylo optimizers: the loss reaches VeLO and Celo.

``Trainer`` calls ``optimizer.step()`` without the loss. :class:`PyloTrainer` records the loss of every
training step (the one ``Trainer`` calls ``backward()`` on: already divided by
``gradient_accumulation_steps``, or normalised by the tokens of the whole accumulated batch), so the
optimizer sees the mean loss of the accumulated batch. Example::

    from transformers import TrainingArguments
    from pylo.integrations.hf import PyloTrainer
    from pylo.optim import VeLO

    args = TrainingArguments("out", max_steps=1000, lr_scheduler_type="constant", learning_rate=1.0)
    opt = VeLO(model.parameters(), num_steps=args.max_steps)
    trainer = PyloTrainer(model=model, args=args, train_dataset=ds, optimizers=(opt, None))
    trainer.train()

``lr_scheduler_type="constant"``: ``Trainer``'s default linear decay would multiply the learned step by
a schedule the optimizer was not meta-trained with (``learning_rate`` is then ``lr``, 1.0 for VeLO).
"""

from __future__ import annotations

from transformers import Trainer

from pylo.integrations import feed_loss


class PyloTrainerMixin:
    """Put before ``Trainer`` (or a subclass such as TRL's) in the bases of your own trainer class."""

    def training_step(self, model, inputs, *args, **kwargs):
        loss = super().training_step(model, inputs, *args, **kwargs)
        feed_loss(self.optimizer, loss)
        return loss


class PyloTrainer(PyloTrainerMixin, Trainer):
    """``transformers.Trainer`` that feeds each step's loss to a pylo optimizer."""
