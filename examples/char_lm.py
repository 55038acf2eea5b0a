"""A character-level transformer language model on Python's own standard library, trained with AdamW
and with pylo's learned optimizers.

The text is the source of a fixed list of standard-library modules (it ships with every Python, no
download), about 400 kB, split 90/10 into training and validation text. The model is a causal
transformer (2 layers, d_model 64, 4 heads, context 64) over the characters that occur in the text.
Every optimizer trains the same model from the same initialisation on the same batches of 32
windows. Learned optimizers whose weights are not at hand are reported as skipped.

Usage (Celo's weights converted once from the upstream JAX checkpoint):

    pylo-convert ../shared/checkpoints/celo/theta.state /tmp/celo --optimizer celo
    python examples/char_lm.py --checkpoint celo=/tmp/celo
    python examples/char_lm.py --optimizers adamw,celo --steps 200 --checkpoint celo=/tmp/celo --out /tmp/lm

Writes to --out: char_lm.png (training and validation loss per optimizer), results.md and
results.json (final train and validation loss, validation bits per character, wall time; the curves
in the JSON).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict

import torch
from torch import nn

import common

DEFAULT_STEPS = 1500
DEFAULT_ADAMW_LR = 3e-3
BATCH, CONTEXT, D_MODEL, HEADS, LAYERS = 32, 64, 64, 4, 2
EVAL_BATCHES = 8
#: the standard-library modules whose source is the text, in this order
MODULES = ("argparse.py", "textwrap.py", "functools.py", "heapq.py", "bisect.py", "string.py", "shlex.py",
           "fractions.py", "statistics.py", "dataclasses.py", "enum.py", "pathlib.py", "contextlib.py",
           "calendar.py", "difflib.py", "configparser.py")
MAX_CHARS = 400_000


def corpus() -> str:
    """The concatenated source of :data:`MODULES` (those present), cut to :data:`MAX_CHARS`."""
    stdlib = Path(os.__file__).parent
    parts = []
    for name in MODULES:
        for path in (stdlib / name, stdlib / name.replace(".py", "") / "__init__.py"):
            if path.is_file():
                parts.append(path.read_text(encoding="utf-8"))
                break
    text = "\n".join(parts)[:MAX_CHARS]
    if len(text) < 50_000:
        raise SystemExit(f"only {len(text)} characters of standard-library source found under {stdlib}")
    return text


class CharTransformer(nn.Module):
    """Token and position embeddings, a causal transformer encoder, a linear read-out."""

    def __init__(self, vocab: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, D_MODEL)
        self.pos_embed = nn.Parameter(0.02 * torch.randn(CONTEXT, D_MODEL))
        layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, 4 * D_MODEL, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(CONTEXT), persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.embed(idx) + self.pos_embed[: idx.shape[1]]
        h = self.blocks(h, mask=self.mask[: idx.shape[1], : idx.shape[1]], is_causal=True)
        return self.head(self.norm(h))


def make_task(seed: int) -> common.Task:
    """The language-modelling problem: random windows of the training text, next-character loss."""
    text = corpus()
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text], dtype=torch.int64)
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]

    def windows(source: torch.Tensor, generator: torch.Generator, n: int):
        start = torch.randint(len(source) - CONTEXT - 1, (n,), generator=generator)
        offsets = torch.arange(CONTEXT + 1)
        chunk = source[start[:, None] + offsets]
        return chunk[:, :-1], chunk[:, 1:]

    def loss(model: nn.Module, xy) -> torch.Tensor:
        logits = model(xy[0])
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), xy[1].reshape(-1))

    fixed = {name: [windows(src, torch.Generator().manual_seed(seed + 7 + i), BATCH) for i in range(EVAL_BATCHES)]
             for name, src in (("train", train), ("val", val))}

    @torch.no_grad()
    def evaluate(model: nn.Module) -> Dict[str, float]:
        model.eval()
        out = {f"{name}_loss": sum(loss(model, b).item() for b in batches) / len(batches)
               for name, batches in fixed.items()}
        out["val_bits_per_char"] = out["val_loss"] / math.log(2)
        return out

    details = {"data": f"{len(text)} characters of stdlib source ({len(chars)} distinct), 90/10 split",
               "batch": f"{BATCH} x {CONTEXT}", "model": f"causal transformer, {LAYERS} layers, d_model {D_MODEL}, "
               f"{HEADS} heads"}
    return common.Task("char_lm", lambda: CharTransformer(len(chars)), lambda g: windows(train, g, BATCH),
                       loss, evaluate, details)


PANELS = [
    common.Panel("training loss", "cross-entropy (nats)", [("batch_loss", "-", " (batches, smoothed)"),
                                                          ("train_loss", "o--", " (train windows)")]),
    common.Panel("validation loss", "cross-entropy (nats)", [("val_loss", "-o", "")]),
]
COLUMNS = [("final train loss", "final_train_loss", ".4f"), ("final val loss", "final_val_loss", ".4f"),
           ("val bits/char", "final_val_bits_per_char", ".3f"), ("wall time (s)", "wall_time_s", ".1f")]


def main(argv=None) -> None:
    parser = common.make_parser(__doc__, DEFAULT_STEPS, "examples/out/char_lm", DEFAULT_ADAMW_LR)
    args = common.parse_args(parser, argv)
    common.main(make_task(args.seed), args, PANELS, COLUMNS)


if __name__ == "__main__":
    main()
