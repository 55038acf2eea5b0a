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


WORKLOADS: Dict[str, callable] = {"mlp": mlp, "transformer": transformer}


def numel(shapes: List[Tuple[str, Shape]]) -> int:
    total = 0
    for _, shape in shapes:
        n = 1
        for d in shape:
            n *= d
        total += n
    return total
