"""Benchmark workloads: named parameter shapes (torch layout)."""

from __future__ import annotations

from typing import Dict, List, Tuple

Shape = Tuple[int, ...]


def mlp() -> List[Tuple[str, Shape]]:
    """MLP 784-1024-1024-10 (1.86 M parameters)."""
    sizes = [784, 1024, 1024, 10]
    out = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        out += [(f"linear{i}.weight", (fan_out, fan_in)), (f"linear{i}.bias", (fan_out,))]
    return out


def transformer() -> List[Tuple[str, Shape]]:
    """Transformer-shaped stack (11.6 M parameters): 8 x (1024 x 1024) plus a 50k x 64 embedding."""
    return [("embed.weight", (50000, 64))] + [(f"block{i}.weight", (1024, 1024)) for i in range(8)]


def vit_b16() -> List[Tuple[str, Shape]]:
    """ViT-B/16 at 224 px with a 1000-class head (86.6 M parameters): the PyLO paper's workload."""
    d, mlp_dim = 768, 3072
    out = [("patch_embed.weight", (d, 3, 16, 16)), ("patch_embed.bias", (d,)), ("cls_token", (1, 1, d)),
           ("pos_embed", (1, 197, d))]
    for i in range(12):
        b = f"blocks.{i}."
        out += [(b + "norm1.weight", (d,)), (b + "norm1.bias", (d,)), (b + "attn.qkv.weight", (3 * d, d)),
                (b + "attn.qkv.bias", (3 * d,)), (b + "attn.proj.weight", (d, d)), (b + "attn.proj.bias", (d,)),
                (b + "norm2.weight", (d,)), (b + "norm2.bias", (d,)), (b + "mlp.fc1.weight", (mlp_dim, d)),
                (b + "mlp.fc1.bias", (mlp_dim,)), (b + "mlp.fc2.weight", (d, mlp_dim)), (b + "mlp.fc2.bias", (d,))]
    return out + [("norm.weight", (d,)), ("norm.bias", (d,)), ("head.weight", (1000, d)), ("head.bias", (1000,))]


def parse_shapes(text: str) -> List[Tuple[str, Shape]]:
    """``"1024x1024,512,3x3x64x64"`` -> named shapes."""
    out = []
    for i, item in enumerate(filter(None, (t.strip() for t in text.split(",")))):
        try:
            shape = tuple(int(d) for d in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"bad shape {item!r}: use sizes joined by 'x', e.g. 1024x1024") from None
        if any(d < 1 for d in shape):
            raise ValueError(f"bad shape {item!r}: sizes must be positive")
        out.append((f"p{i}", shape))
    if not out:
        raise ValueError("no shapes given")
    return out


WORKLOADS: Dict[str, callable] = {"mlp": mlp, "transformer": transformer, "vit_b16": vit_b16}
#: what `pylo-bench` runs without --workload (ViT-B/16 is asked for by name: 86 M parameters)
DEFAULT_WORKLOADS = ("mlp", "transformer")


def numel(shapes: List[Tuple[str, Shape]]) -> int:
    total = 0
    for _, shape in shapes:
        n = 1
        for d in shape:
            n *= d
        total += n
    return total
