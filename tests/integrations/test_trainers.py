"""The trainer recipes with the real packages: each feeds VeLO/Celo the mean loss of the accumulated
batch (the micro-batch losses are recorded by the model itself, independently of the trainer's own
scaling), and a bare trainer keeps the clear missing-loss error."""

from __future__ import annotations

import pytest
import torch

from integrations.common import IN, N, OUT, data, learned, spy_losses, tiny_model, window_means

K, BATCH, STEPS = 2, 4, 3  # micro-batches per step, micro-batch size, optimizer steps


class Recorded(torch.nn.Module):
    """The tiny model, returning its loss as HF models do and recording each micro-batch's mean loss
    (and, when asked for ``num_items_in_batch``, its summed loss and item count)."""

    def __init__(self, token_normalised: bool = False):
        super().__init__()
        self.net = tiny_model()
        self.token_normalised = token_normalised
        self.accepts_loss_kwargs = token_normalised  # how HF models tell Trainer they normalise by the items
        self.sums, self.counts = [], []

    def forward(self, x, labels, **kwargs):
        err = (self.net(x) - labels).square()  # Trainer counts label elements as the items
        self.sums.append(err.sum().item())
        self.counts.append(err.numel())
        n = kwargs.get("num_items_in_batch")
        loss = err.sum() / n if self.token_normalised and n is not None else err.mean()
        return {"loss": loss}


def _expected(model: Recorded) -> list:
    """The mean loss over each step's accumulated batch, from the model's own records."""
    sums = [sum(model.sums[i:i + K]) for i in range(0, len(model.sums), K)]
    counts = [sum(model.counts[i:i + K]) for i in range(0, len(model.counts), K)]
    return [s / c for s, c in zip(sums, counts)]


class _Rows(torch.utils.data.Dataset):
    def __init__(self):
        self.x, self.y = data()

    def __len__(self):
        return N

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def _hf_trainer(cls, model, opt, tmp_path):
    transformers = pytest.importorskip("transformers")
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=K, learning_rate=1.0, lr_scheduler_type="constant", use_cpu=True,
        report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    return cls(model=model, args=args, train_dataset=_Rows(), optimizers=(opt, None))


@pytest.mark.parametrize("token_normalised", [False, True], ids=["mean-loss", "num_items_in_batch"])
@pytest.mark.parametrize("name", ["velo", "celo"])
def test_hf_trainer_feeds_the_mean_loss(name, token_normalised, tmp_path):
    from pylo.integrations.hf import PyloTrainer

    model = Recorded(token_normalised)
    opt = learned(name, model.parameters(), num_steps=STEPS)
    fed = spy_losses(opt)
    _hf_trainer(PyloTrainer, model, opt, tmp_path).train()
    assert len(fed) == STEPS
    assert fed == pytest.approx(_expected(model), rel=1e-5)


def test_bare_hf_trainer_keeps_the_missing_loss_error(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = Recorded()
    opt = learned("velo", model.parameters(), num_steps=STEPS)
    with pytest.raises(TypeError, match="needs the training loss.*pylo.integrations"):
        _hf_trainer(transformers.Trainer, model, opt, tmp_path).train()


def test_hf_trainer_forgets_the_losses_of_a_step_a_grad_scaler_skipped(tmp_path):
    """fp16 skipped steps never reach pylo's step and Trainer zeroes gradients through the model: the
    step-end callback drops what was recorded, so the next step does not see two windows' losses."""
    from pylo.integrations.hf import PyloTrainer

    model = Recorded()
    opt = learned("velo", model.parameters(), num_steps=STEPS)
    trainer = _hf_trainer(PyloTrainer, model, opt, tmp_path)
    opt.accumulate_loss(3.0)
    trainer.callback_handler.on_step_end(trainer.args, trainer.state, trainer.control)
    assert opt._pending_loss is None


def _lightning_fit(name, callbacks, accumulate=K, plugins=()):
    L = pytest.importorskip("lightning.pytorch")

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = tiny_model()
            self.micro = []

        def training_step(self, batch, _):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.micro.append(loss.item())
            return loss

        def configure_optimizers(self):
            self.opt = learned(name, self.parameters(), num_steps=STEPS)
            self.fed = spy_losses(self.opt)
            return self.opt

    module = Module()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data()), batch_size=BATCH)
    trainer = L.Trainer(max_steps=STEPS, accumulate_grad_batches=accumulate, callbacks=callbacks,
                        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, plugins=list(plugins),
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    return module


@pytest.mark.parametrize("name", ["velo", "celo"])
def test_lightning_callback_feeds_the_mean_loss(name):
    from pylo.integrations.lightning import PyloLossCallback

    module = _lightning_fit(name, [PyloLossCallback()])
    assert len(module.fed) == STEPS
    assert module.fed == pytest.approx(window_means(module.micro, K), rel=1e-6)


def test_lightning_16_mixed_with_a_grad_scaler_feeds_the_unscaled_mean_loss():
    from lightning.pytorch.plugins.precision import MixedPrecision

    from pylo.integrations.lightning import PyloLossCallback

    scaled = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 12))
    module = _lightning_fit("velo", [PyloLossCallback()], plugins=[scaled])
    assert len(module.fed) == STEPS
    assert module.fed == pytest.approx(window_means(module.micro, K), rel=1e-6)


def test_lightning_without_the_callback_feeds_only_the_last_micro_batch():
    """Why the callback exists: Lightning's closure returns the last micro-batch's loss / k."""
    module = _lightning_fit("velo", [])
    assert module.fed == pytest.approx([module.micro[i + K - 1] / K for i in range(0, len(module.micro), K)],
                                       rel=1e-6)


def test_accelerate_backward_feeds_the_mean_loss():
    accelerate = pytest.importorskip("accelerate")
    from pylo.integrations import accelerate as pylo_accelerate

    accelerator = accelerate.Accelerator(gradient_accumulation_steps=K, cpu=True)
    model = tiny_model()
    opt = learned("velo", model.parameters(), num_steps=STEPS)
    fed = spy_losses(opt)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data(K * BATCH * STEPS)),
                                         batch_size=BATCH)
    model, popt, loader = accelerator.prepare(model, opt, loader)
    micro = []
    for x, y in loader:
        with accelerator.accumulate(model):
            loss = torch.nn.functional.mse_loss(model(x), y)
            micro.append(loss.item())
            pylo_accelerate.backward(accelerator, loss, popt)
            popt.step()
            popt.zero_grad()
    assert len(fed) == STEPS
    assert fed == pytest.approx(window_means(micro, K), rel=1e-6)


def test_shapes_used_by_the_tests():
    assert (IN, OUT) == (6, 3) and N % (K * BATCH) == 0
