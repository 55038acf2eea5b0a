"""Handwritten digits: a tiny CNN trained with AdamW and with pylo's learned optimizers.

The data is scikit-learn's bundled digits set (1797 8x8 images, 10 classes; it ships with
scikit-learn, no download), split 70/30 into train and test (stratified, fixed seed). Every
optimizer trains the same model from the same initialisation on the same batches of 64.
Learned optimizers whose weights are not at hand are reported as skipped.

Usage (Celo's weights converted once from the upstream JAX checkpoint):

    pylo-convert ../shared/checkpoints/celo/theta.state /tmp/celo --optimizer celo
    python examples/digits.py --checkpoint celo=/tmp/celo
    python examples/digits.py --optimizers adamw,celo --steps 300 --checkpoint celo=/tmp/celo --out /tmp/digits

Writes to --out: digits.png (training loss and test accuracy per optimizer), results.md and
results.json (final train loss, test loss and accuracy, wall time; the curves in the JSON).
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn

import common

DEFAULT_STEPS = 1000
DEFAULT_ADAMW_LR = 3e-3
BATCH = 64


def load_split(seed: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: images as (N, 1, 8, 8) floats in [0, 1], labels as int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(range(len(y)), test_size=0.3, random_state=seed, stratify=digits.target)
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def make_model() -> nn.Module:
    """Two 3x3 conv layers with max-pooling (8x8 -> 4x4 -> 2x2), then a two-layer classifier head."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10))


def make_task(seed: int) -> common.Task:
    """The digits problem: batches of 64 drawn with replacement from the training split."""
    x_train, y_train, x_test, y_test = load_split(seed)

    def batch(generator: torch.Generator):
        idx = torch.randint(len(y_train), (BATCH,), generator=generator)
        return x_train[idx], y_train[idx]

    def loss(model: nn.Module, xy) -> torch.Tensor:
        return nn.functional.cross_entropy(model(xy[0]), xy[1])

    @torch.no_grad()
    def evaluate(model: nn.Module) -> Dict[str, float]:
        model.eval()
        logits = model(x_test)
        return {"train_loss": nn.functional.cross_entropy(model(x_train), y_train).item(),
                "test_loss": nn.functional.cross_entropy(logits, y_test).item(),
                "test_accuracy": (logits.argmax(1) == y_test).float().mean().item()}

    details = {"data": f"sklearn digits, {len(y_train)} train / {len(y_test)} test", "batch": BATCH,
               "model": "CNN conv16-conv32-fc64-fc10"}
    return common.Task("digits", make_model, batch, loss, evaluate, details)


PANELS = [
    common.Panel("training loss", "cross-entropy", [("batch_loss", "-", " (batches, smoothed)"),
                                                   ("train_loss", "o--", " (train set)")], logy=True),
    common.Panel("test accuracy", "accuracy", [("test_accuracy", "-o", "")]),
]
COLUMNS = [("final train loss", "final_train_loss", ".4f"), ("final test loss", "final_test_loss", ".4f"),
           ("final test accuracy", "final_test_accuracy", ".2%"), ("wall time (s)", "wall_time_s", ".1f")]


def main(argv=None) -> None:
    parser = common.make_parser(__doc__, DEFAULT_STEPS, "examples/out/digits", DEFAULT_ADAMW_LR)
    args = common.parse_args(parser, argv)
    common.main(make_task(args.seed), args, PANELS, COLUMNS)


if __name__ == "__main__":
    main()
