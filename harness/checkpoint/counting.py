"""Parameter counts of a checkpoint, from its tensors: headers, plus expert bytes to find shared experts."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.archs import get_arch
from harness.checkpoint.errors import CheckpointError
from harness.checkpoint.quantisation import (
    PACKED_NAME,
    QUANT_COMPANIONS,
    QuantisationError,
    detect_format,
    mxfp4_logical_numel,
    packed_numel,
)
from harness.checkpoint.roles import TensorRoles
from harness.checkpoint.shards import DTYPES, OpenFiles, ShardReader, TensorInfo, load_range


@dataclass(frozen=True)
class ParameterCounts:
    """Logical parameters (packed int4 counted unpacked; quantisation scales are not parameters)."""

    total: int  # every parameter of the decoder, each distinct routed expert once
    activated: int  # per token: everything but the routed experts, plus top_k routed experts per MoE layer
    routed_experts: int  # distinct routed experts over all MoE layers
    routed_slots: int  # router slots over all MoE layers
    # Layers stored beyond num_hidden_layers (multi-token prediction): not part of the served model and
    # not written into compressed checkpoints, so left out of `total` for the baseline and the variants alike.
    extra_layers: int = 0


def parameter_counts(model_dir: str | Path) -> ParameterCounts:
    """Parameter counts of a written checkpoint, from its tensors (headers, plus expert bytes to find shared ones)."""
    ckpt = ShardReader(model_dir)
    arch = get_arch(model_dir)
    roles = TensorRoles(arch, ckpt.tensors)
    dense = extra = 0
    num_bits = _packed_bits(model_dir, ckpt.tensors)
    parts: dict[int, dict[int, list[_Part]]] = {}
    sizes: dict[int, dict[int, int]] = {}
    for key, info in ckpt.tensors.items():
        role = roles.role(key)
        numel = _logical_numel(key, info, ckpt.tensors, num_bits)
        if role.kind == "expert":
            parts.setdefault(role.layer, {}).setdefault(role.expert, []).append((role.name, info.file, info.start,
                                                                                 info.end))
            sizes.setdefault(role.layer, {}).setdefault(role.expert, 0)
            sizes[role.layer][role.expert] += numel
        elif role.kind == "fused":
            n = info.shape[0]
            row = info.nbytes // n
            for j in range(n):
                parts.setdefault(role.layer, {}).setdefault(j, []).append(
                    (role.name, info.file, info.start + j * row, info.start + (j + 1) * row))
                sizes.setdefault(role.layer, {}).setdefault(j, 0)
                sizes[role.layer][j] += numel // n
        elif role.kind == "extra_layer":
            extra += numel
        else:
            dense += numel
    total, activated, distinct, slots = dense, dense, 0, 0
    for layer, experts in parts.items():
        keep = _distinct(experts)
        total += sum(sizes[layer][j] for j in keep)
        activated += arch.top_k * max(sizes[layer].values())
        distinct += len(keep)
        slots += len(experts)
    return ParameterCounts(total=total, activated=activated, routed_experts=distinct, routed_slots=slots,
                           extra_layers=extra)


def count_parameters(model_dir: str | Path) -> tuple[int, int]:
    """(total parameters counting each distinct tensor once, activated parameters per token)."""
    counts = parameter_counts(model_dir)
    return counts.total, counts.activated


def _logical_numel(key: str, info: TensorInfo, tensors: dict[str, TensorInfo], num_bits: int = 4) -> int:
    mxfp4 = mxfp4_logical_numel(key, info.shape, tensors)
    if mxfp4 is not None:
        return mxfp4
    stem, _, last = key.rpartition(".")
    if last in QUANT_COMPANIONS:
        return 0
    if last == PACKED_NAME:
        shape_key = f"{stem}.weight_shape"
        shape = load_range(tensors[shape_key]).tolist() if shape_key in tensors else None
        words = (info.numel * DTYPES[info.dtype].itemsize // 4,)  # int32 words
        return packed_numel(words, num_bits, shape)
    return info.numel


def _packed_bits(model_dir: str | Path, keys: Iterable[str]) -> int:
    """Bits per packed value (only needed for packed tensors without a weight_shape); 4 when unsure."""
    try:
        return detect_format(model_dir, keys).num_bits or 4
    except (QuantisationError, OSError, ValueError):
        return 4


# -- distinct experts ------------------------------------------------------------------------------------
_Part = tuple[str, Path, int, int]  # (tensor name, file, first byte, end byte)
_CHUNK = 8 << 20


def _cheap_digest(parts: list[_Part], files: OpenFiles) -> bytes:
    """Names, sizes and 4 KiB at each end of each tensor: equal for identical experts, rarely for others."""
    digest = hashlib.blake2b(digest_size=20)
    for name, path, start, end in parts:
        digest.update(f"{name}:{end - start};".encode())
        for a, b in [(start, end)] if end - start <= 8192 else [(start, start + 4096), (end - 4096, end)]:
            chunk = os.pread(files.fd(path), b - a, a)
            if len(chunk) != b - a:
                raise CheckpointError(f"{path} is truncated: tensor {name} ends at byte {end}, "
                                      f"the file at {a + len(chunk)}")
            digest.update(chunk)
    return digest.digest()


def _same_bytes(a: list[_Part], b: list[_Part], files: OpenFiles) -> bool:
    """Byte-by-byte comparison of two experts' tensors, a few MiB at a time."""
    if [(n, e - s) for n, _, s, e in a] != [(n, e - s) for n, _, s, e in b]:
        return False
    for (_, pa, sa, ea), (_, pb, sb, _eb) in zip(a, b, strict=True):
        for offset in range(0, ea - sa, _CHUNK):
            n = min(_CHUNK, ea - sa - offset)
            if os.pread(files.fd(pa), n, sa + offset) != os.pread(files.fd(pb), n, sb + offset):
                return False
    return True


def _distinct(experts: dict[int, list[_Part]]) -> list[int]:
    """One representative per group of byte-identical experts (candidates by cheap digest, then compared)."""
    keep = []
    with OpenFiles() as files:
        by_cheap: dict[bytes, list[int]] = {}
        for j, parts in sorted(experts.items()):
            by_cheap.setdefault(_cheap_digest(parts, files), []).append(j)
        for same in by_cheap.values():
            representatives: list[int] = []
            for j in same:
                if not any(_same_bytes(experts[r], experts[j], files) for r in representatives):
                    representatives.append(j)
            keep += representatives
    return sorted(keep)
