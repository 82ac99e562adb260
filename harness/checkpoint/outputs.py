"""One tensor of the new checkpoint and how it is produced: byte ranges of a source file, or a computation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from harness.checkpoint.shards import DTYPES, TensorInfo, load_range


@dataclass
class OutputTensor:
    """One tensor of the new checkpoint and how to produce it."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    anchor: TensorInfo  # the source tensor it stands in for (decides its shard and position)
    ranges: list[tuple[int, int]] | None = None  # byte ranges of anchor.file, concatenated
    compute: Callable[[], dict[str, torch.Tensor]] | None = None  # returns this and its siblings
    cache_key: Any = None  # outputs sharing a computation

    @property
    def nbytes(self) -> int:
        n = DTYPES[self.dtype].itemsize
        for s in self.shape:
            n *= s
        return n


def copied(key: str, info: TensorInfo, new_key: str | None = None) -> OutputTensor:
    """The source tensor as it is (under `new_key` when renamed)."""
    return OutputTensor(new_key or key, info.dtype, info.shape, info, ranges=[(info.start, info.end)])


def rows_selected(key: str, info: TensorInfo, rows: list[int]) -> OutputTensor:
    """Rows of dim 0 of a contiguous tensor: byte ranges, adjacent ones joined."""
    row = info.nbytes // info.shape[0]
    ranges: list[tuple[int, int]] = []
    for r in rows:
        start = info.start + r * row
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], start + row)
        else:
            ranges.append((start, start + row))
    return OutputTensor(key, info.dtype, (len(rows), *info.shape[1:]), info, ranges=ranges)


def last_selected(key: str, info: TensorInfo, index: list[int]) -> OutputTensor:
    """Entries `index` of the last dimension (computed: not contiguous in the file)."""
    def compute() -> dict[str, torch.Tensor]:
        return {key: load_range(info)[..., index].contiguous()}

    return OutputTensor(key, info.dtype, (*info.shape[:-1], len(index)), info, compute=compute,
                        cache_key=("last", key))
