"""Pieces for the fused backends: walking a tensor in bounded chunks.

The fused backends never build a ``(numel, features)`` tensor for a whole
parameter. They visit a contiguous work-layout tensor in *slabs*: index tuples
that fix the leading axes and take a range of one axis, so that every slab is
a contiguous block of at most ``chunk`` elements and every broadcast view
(an Adafactor row or column table expanded over the tensor) can be sliced with
the same index. Features are written channel-major into a reused
``(channels, chunk)`` buffer: each channel row is contiguous.
"""

from __future__ import annotations

import itertools
from typing import Iterator, Sequence, Tuple

#: elements per chunk of every fused backend (``chunk_size=``): ~3.5 MB of channel-major features, few
#: enough slabs that the per-operation overhead stays small (single-thread CPU, VeLO: 16384 -> 32768 is
#: ~10% faster, 65536 about the same)
DEFAULT_CHUNK = 32768


def slabs(shape: Sequence[int], chunk: int = DEFAULT_CHUNK) -> Iterator[Tuple[tuple, int]]:
    """Yield ``(index, count)``: an index into ``shape`` selecting a contiguous block of ``count`` elements.

    Blocks cover the tensor in row-major order, each of at most ``max(chunk, 1)``
    elements unless a single trailing row is larger (then one row per block).

    >>> [i for i, _ in slabs((3, 4), 8)]
    [(slice(0, 2, None),), (slice(2, 3, None),)]
    """
    shape = tuple(int(s) for s in shape)
    if not shape:
        yield (), 1
        return
    if 0 in shape:  # nothing to visit (an empty shard of a sharded tensor)
        return
    suffix = 1
    axis = len(shape) - 1
    # the outermost axis whose trailing block fits in a chunk
    sizes = [1] * (len(shape) + 1)
    for i in range(len(shape) - 1, -1, -1):
        sizes[i] = sizes[i + 1] * shape[i]
    axis = next((i for i in range(len(shape)) if sizes[i + 1] <= chunk), len(shape) - 1)
    suffix = sizes[axis + 1]
    step = max(1, chunk // suffix)
    for prefix in itertools.product(*(range(s) for s in shape[:axis])):
        for start in range(0, shape[axis], step):
            stop = min(shape[axis], start + step)
            yield prefix + (slice(start, stop),), (stop - start) * suffix


def matrix_slabs(shape: Sequence[int], chunk: int = DEFAULT_CHUNK) -> Iterator[Tuple[int, tuple, int]]:
    """Slabs (as :func:`slabs`) that never cross a matrix of the last two axes.

    Yields ``(matrix, index, count)``: ``matrix`` numbers the matrices in
    row-major order of the leading axes (0 for rank <= 2; a 1-D tensor is one
    matrix). For per-matrix statistics such as CELO2's normaliser.

    >>> [(m, i) for m, i, _ in matrix_slabs((2, 2, 3), 4)]
    [(0, (0, slice(0, 1, None))), (0, (0, slice(1, 2, None))), (1, (1, slice(0, 1, None))), (1, (1, slice(1, 2, None)))]
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) <= 2:
        for idx, count in slabs(shape, chunk):
            yield 0, idx, count
        return
    for m, prefix in enumerate(itertools.product(*(range(s) for s in shape[:-2]))):
        for idx, count in slabs(shape[-2:], chunk):
            yield m, prefix + idx, count
