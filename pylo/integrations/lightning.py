"""Lightning with pylo optimizers: :class:`PyloLossCallback` feeds VeLO and Celo the mean loss.

Lightning passes VeLO and Celo a closure, whose value is only the last micro-batch's loss divided by
``accumulate_grad_batches``. The callback records every loss Lightning calls ``backward()`` on (each
divided by ``accumulate_grad_batches``, and unscaled under ``precision="16-mixed"``), so the optimizer
sees the mean loss of the accumulated batches.
Example::

    import lightning as L
    from pylo.integrations.lightning import PyloLossCallback

    class Model(L.LightningModule):
        def configure_optimizers(self):
            return VeLO(self.parameters(), num_steps=1000)

    L.Trainer(max_steps=1000, accumulate_grad_batches=4, callbacks=[PyloLossCallback()]).fit(Model(), loader)

With manual optimisation call ``opt.step(loss)`` yourself; the callback records nothing then.
"""

from __future__ import annotations

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the standalone package
    from pytorch_lightning.callbacks import Callback

from pylo.integrations import feed_loss


class PyloLossCallback(Callback):
    """Records each loss before ``backward()`` on the trainer's pylo optimizers."""

    def on_before_backward(self, trainer, pl_module, loss):
        if not pl_module.automatic_optimization:
            return
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():  # 16-mixed: the loss arrives multiplied by the scale
            loss = loss.detach() / scaler.get_scale()
        for optimizer in trainer.optimizers:
            feed_loss(optimizer, loss)
