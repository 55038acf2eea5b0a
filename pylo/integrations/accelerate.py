"""``accelerate`` with pylo optimizers: :func:`backward` records the loss ``accelerator.backward`` uses.

``accelerator.backward(loss)`` divides the loss by ``gradient_accumulation_steps``; the prepared
optimizer steps only on the last micro-batch and calls ``step()`` without the loss. Example::

    from accelerate import Accelerator
    from pylo.integrations import accelerate as pylo_accelerate

    accelerator = Accelerator(gradient_accumulation_steps=4)
    model, opt, loader = accelerator.prepare(model, VeLO(model.parameters(), num_steps=1000), loader)
    for x, y in loader:
        with accelerator.accumulate(model):
            loss = criterion(model(x), y)
            pylo_accelerate.backward(accelerator, loss, opt)   # in place of accelerator.backward(loss)
            opt.step()
            opt.zero_grad()
"""

from __future__ import annotations

from pylo.integrations import feed_loss


def backward(accelerator, loss, optimizer, **kwargs) -> None:
    """``accelerator.backward(loss, **kwargs)``, then the same loss (divided as accelerate divides it)
    recorded on the pylo optimizer inside ``optimizer``."""
    accelerator.backward(loss, **kwargs)
    feed_loss(optimizer, loss / accelerator.gradient_accumulation_steps)
