"""The project's one safetensors reader: headers, key -> file and byte range, tensors by key or prefix.

Only headers are parsed up front (a few KiB per file), so opening a checkpoint of hundreds of
shards is cheap; tensors are read straight from their byte ranges, one at a time, with plain
reads (not memory maps, whose pages would count as this process's memory).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.checkpoint.errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes lie in its file."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offsets in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """The tensors of one safetensors file (in file order) and its metadata, from the header only."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + size
    infos = {key: TensorInfo(path, h["dtype"], tuple(h["shape"]), base + h["data_offsets"][0],
                             base + h["data_offsets"][1]) for key, h in header.items()}
    return dict(sorted(infos.items(), key=lambda kv: kv[1].start)), metadata


class OpenFiles:
    """File descriptors opened once per file, read-only, closed together."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}

    def fd(self, path: Path) -> int:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> OpenFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_tensor(info: TensorInfo, fd: int) -> torch.Tensor:
    if info.dtype not in DTYPES:
        raise CheckpointError(f"{info.file}: tensor dtype {info.dtype} is not supported "
                              f"(supported: {', '.join(DTYPES)})")
    dtype = DTYPES[info.dtype]
    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=dtype)
    buffer = bytearray(info.nbytes)
    view, done = memoryview(buffer), 0
    while done < info.nbytes:
        n = os.preadv(fd, [view[done:]], info.start + done)
        if n == 0:
            raise CheckpointError(f"{info.file} is truncated: a tensor ends at byte {info.end}, "
                                  f"the file at {info.start + done}")
        done += n
    return torch.frombuffer(buffer, dtype=dtype).reshape(info.shape)


def load_range(info: TensorInfo) -> torch.Tensor:
    """One tensor, read straight from its bytes."""
    with OpenFiles() as files:
        return _read_tensor(info, files.fd(info.file))


class ShardReader:
    """All tensors of a checkpoint directory (sharded with an index, or single files), by key."""

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        index = self.model_dir / INDEX_NAME
        if index.is_file():
            names = dict.fromkeys(json.loads(index.read_text())["weight_map"].values())
            self.files = [self.model_dir / name for name in names]
        else:
            self.files = sorted(self.model_dir.glob("*.safetensors"))
        if not self.files:
            raise FileNotFoundError(f"no *.safetensors files in {self.model_dir}: only safetensors checkpoints "
                                    "are read (convert .bin weights first)")
        self.tensors: dict[str, TensorInfo] = {}  # in file order, then byte order
        self.metadata: dict[Path, dict[str, str]] = {}
        for path in self.files:
            infos, self.metadata[path] = read_header(path)
            clash = self.tensors.keys() & infos.keys()
            if clash:
                raise CheckpointError(f"tensor {sorted(clash)[0]!r} appears in more than one file of {self.model_dir}")
            self.tensors.update(infos)

    def load(self, key: str) -> torch.Tensor:
        return load_range(self.tensors[key])

    def load_keys(self, keys: Iterable[str], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The tensors of `keys`, each file opened once, moved to `device`."""
        with OpenFiles() as files:
            out = {}
            for key in keys:
                info = self.tensors[key]
                out[key] = _read_tensor(info, files.fd(info.file)).to(device)
            return out

    def load_prefix(self, prefix: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """All tensors whose key starts with prefix (e.g. one decoder layer)."""
        return self.load_keys([k for k in self.tensors if k.startswith(prefix)], device)
