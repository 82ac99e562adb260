"""Output shards from an OutputPlan: each header computed up front, then tensor after tensor.

Byte-range outputs are copied by the kernel (`sendfile`); computed ones pass through memory one
computation (merge group) at a time, so memory stays near the size of one merge group.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from harness.checkpoint.errors import CheckpointError
from harness.checkpoint.outputs import OutputTensor
from harness.checkpoint.plan_outputs import OutputPlan
from harness.checkpoint.shards import DTYPE_NAMES, OpenFiles, ShardReader


def shard_layout(job: OutputPlan, src: ShardReader) -> list[tuple[str, list[OutputTensor], dict[str, str]]]:
    """(file name, outputs in write order, metadata) of every output shard: one per source file that still has
    tensors. What `write_shards` writes and what `harness.sweep.costs` sizes before writing."""
    rank = {path: r for r, path in enumerate(src.files)}
    by_file: dict[Path, list[OutputTensor]] = {}
    for out in job.outputs:
        by_file.setdefault(out.anchor.file, []).append(out)
    files = sorted(by_file, key=rank.__getitem__)
    layout = []
    for number, source_file in enumerate(files, 1):
        outputs = by_file[source_file]
        # Outputs of one computation next to each other, at the place of its first member.
        first: dict[Any, int] = {}
        for out in outputs:
            if out.cache_key is not None:
                first[out.cache_key] = min(first.get(out.cache_key, out.anchor.start), out.anchor.start)
        outputs.sort(key=lambda o: (first.get(o.cache_key, o.anchor.start), o.anchor.start, o.key))
        name = f"model-{number:05d}-of-{len(files):05d}.safetensors"
        layout.append((name, outputs, {"format": "pt", **src.metadata.get(source_file, {})}))
    return layout


def shard_header(outputs: list[OutputTensor], metadata: dict[str, str]) -> bytes:
    """The safetensors header of a shard (padded to 8 bytes) of `outputs` in this order."""
    header: dict[str, Any] = {}
    offset = 0
    for out in outputs:
        header[out.key] = {"dtype": out.dtype, "shape": list(out.shape), "data_offsets": [offset, offset + out.nbytes]}
        offset += out.nbytes
    header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    return blob + b" " * (-len(blob) % 8)


def shard_bytes(outputs: list[OutputTensor], metadata: dict[str, str]) -> int:
    """The size of the shard file: length prefix, header, tensors."""
    return 8 + len(shard_header(outputs, metadata)) + sum(out.nbytes for out in outputs)


def write_shards(job: OutputPlan, src: ShardReader, out_dir: Path, progress: bool) -> dict[str, str]:
    """One output shard per source file that still has tensors; returns the weight map."""
    from tqdm.auto import tqdm

    weight_map: dict[str, str] = {}
    computed = _Computed()
    total = sum(out.nbytes for out in job.outputs)
    with OpenFiles() as sources, tqdm(total=total, unit="B", unit_scale=True, desc="writing checkpoint",
                                      disable=not progress, leave=False) as bar:
        for name, outputs, metadata in shard_layout(job, src):
            _write_shard(out_dir / name, outputs, metadata, sources, computed, bar.update)
            weight_map.update({out.key: name for out in outputs})
    return weight_map


def _write_shard(path: Path, outputs: list[OutputTensor], metadata: dict[str, str], sources: OpenFiles,
                 computed: _Computed, advance: Callable[[int], Any]) -> None:
    blob = shard_header(outputs, metadata)
    offset = sum(out.nbytes for out in outputs)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # minus the umask
    try:
        _write_all(fd, memoryview(len(blob).to_bytes(8, "little") + blob))
        for out in outputs:
            if out.ranges is not None:
                src_fd = sources.fd(out.anchor.file)
                for start, end in out.ranges:
                    _copy_range(src_fd, fd, start, end)
            else:
                _write_all(fd, _tensor_bytes(computed.get(out)))
            advance(out.nbytes)
        written = os.lseek(fd, 0, os.SEEK_CUR)
    finally:
        os.close(fd)
    if written != 8 + len(blob) + offset:
        raise RuntimeError(f"internal error: {path.name} has {written} bytes, expected {8 + len(blob) + offset}")


class _Computed:
    """The last computation's outputs: the outputs of one merge group are written together."""

    def __init__(self) -> None:
        self.key: Any = None
        self.values: dict[str, torch.Tensor] = {}

    def get(self, out: OutputTensor) -> torch.Tensor:
        if out.cache_key != self.key or out.key not in self.values:
            self.values, self.key = {}, None  # free the previous group first
            self.values, self.key = out.compute(), out.cache_key
        tensor = self.values[out.key]
        if DTYPE_NAMES.get(tensor.dtype) != out.dtype or tuple(tensor.shape) != out.shape:
            raise RuntimeError(f"internal error: {out.key} computed as {tensor.dtype} {tuple(tensor.shape)}, "
                               f"header says {out.dtype} {out.shape}")
        return tensor


def _write_all(fd: int, data: memoryview) -> None:
    done = 0
    while done < len(data):
        done += os.write(fd, data[done:])


def _copy_range(src_fd: int, dst_fd: int, start: int, end: int) -> None:
    offset = start
    while offset < end:
        try:
            sent = os.sendfile(dst_fd, src_fd, offset, min(end - offset, 1 << 30))
        except OSError:  # filesystems without sendfile between files: plain reads
            chunk = os.pread(src_fd, min(end - offset, 16 << 20), offset)
            _write_all(dst_fd, memoryview(chunk))
            sent = len(chunk)
        if sent == 0:
            raise CheckpointError(f"unexpected end of a source file at byte {offset}")
        offset += sent


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")
