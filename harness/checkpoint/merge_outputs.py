"""The outputs of a merging plan's layer: merged experts, per-expert keys (plain or block FP8) or fused.

Each merge group is one computation: its members are loaded (FP8 dequantised), merged by
`expert_merging.merge_experts` and stored again in the source's format, and every member's
slot gets the merged weights ("shared_slots"). Fused expert tensors (one row per expert) are
read and written in the family's orientation, which its adapter knows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness.archs.base import ExpertWeights, MoEArch
from harness.checkpoint.errors import CheckpointError
from harness.checkpoint.expert_merging import merge_experts
from harness.checkpoint.outputs import OutputTensor, copied
from harness.checkpoint.quantisation import FP8_DTYPES, FP8_SCALE_NAMES, dequantise_fp8, quantise_fp8
from harness.checkpoint.roles import LayerTensors, TensorRoles
from harness.checkpoint.shards import DTYPES, ShardReader
from harness.plan import ExpertGroup


def merged_layer(roles: TensorRoles, src: ShardReader, arch: MoEArch, layer: int, tensors: LayerTensors,
                 groups: list[ExpertGroup], block: list[int] | None) -> list[OutputTensor]:
    """Every routed-expert output of one layer under a merging plan (`block`: the FP8 weight block size)."""
    if tensors.fused:
        return _merged_fused(src, arch, layer, tensors, groups)
    outputs = []
    for g, group in enumerate(groups):
        where = f"layer {layer}, group {group.members}"
        if len(group.members) == 1:
            j = group.members[0]
            outputs += [copied(key, src.tensors[key]) for key in tensors.experts[j].values()]
            continue
        names = tensors.experts[group.members[0]]
        for j in group.members[1:]:
            other = tensors.experts[j]
            if sorted(other) != sorted(names) or any(
                    src.tensors[other[n]].shape != src.tensors[names[n]].shape for n in names):
                raise CheckpointError(f"{where}: experts {group.members[0]} and {j} are stored differently")
        formats = _proj_formats(arch, names, src, where)
        compute = _group_merger(roles, src, layer, tensors, group, formats, block)
        for j in group.members:
            for key in tensors.experts[j].values():
                info = src.tensors[key]
                outputs.append(OutputTensor(key, info.dtype, info.shape, info, compute=compute,
                                            cache_key=(layer, g)))
    return outputs


# -- per-expert keys -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ProjFormat:
    """How one projection of an expert is stored: plain, or FP8 with a block scale."""

    weight: str  # name of the weight tensor, e.g. "gate_proj.weight"
    scale: str | None = None  # e.g. "gate_proj.weight_scale_inv"
    input_scale: str | None = None


def _proj_formats(arch: MoEArch, names: dict[str, str], src: ShardReader, where: str) -> dict[str, _ProjFormat]:
    """Check an expert's tensors can be merged and say how each projection is stored."""
    formats: dict[str, _ProjFormat] = {}
    known: set[str] = set()
    for role, proj in arch.hub_expert_names.items():
        weight = f"{proj}.weight"
        if weight not in names:
            packed = sorted(n for n in names if n.startswith(f"{proj}."))
            raise CheckpointError(
                f"{where}: cannot merge experts stored as {packed}: merging is implemented for unquantised and "
                f"block-FP8 experts, not packed int4/int8 (compressed-tensors 'weight_packed'); use a pruning "
                f"method for this checkpoint, or dequantise it first")
        info = src.tensors[names[weight]]
        scale = next((f"{proj}.{s}" for s in FP8_SCALE_NAMES if f"{proj}.{s}" in names), None)
        is_fp8 = DTYPES[info.dtype] in FP8_DTYPES
        if is_fp8 and scale is None:
            raise CheckpointError(f"{where}: FP8 weight {weight} has no weight_scale(_inv) to dequantise it with")
        if not is_fp8 and not DTYPES[info.dtype].is_floating_point:
            raise CheckpointError(f"{where}: cannot merge {weight} of dtype {info.dtype}")
        input_scale = f"{proj}.input_scale" if f"{proj}.input_scale" in names else None
        formats[role] = _ProjFormat(weight, scale if is_fp8 else None, input_scale)
        known |= {weight, scale, input_scale} - {None}
    unknown = sorted(set(names) - known)
    if unknown:
        raise CheckpointError(f"{where}: cannot merge experts that also store {unknown}; only weights, FP8 "
                              f"weight scales and input scales are merged")
    return formats


def _group_merger(roles: TensorRoles, src: ShardReader, layer: int, tensors: LayerTensors, group: ExpertGroup,
                  formats: dict[str, _ProjFormat], block: list[int] | None
                  ) -> Callable[[], dict[str, torch.Tensor]]:
    def load(j: int, fmt: _ProjFormat) -> torch.Tensor:
        names = tensors.experts[j]
        weight = src.load(names[fmt.weight])
        if fmt.scale is None:
            return weight
        return dequantise_fp8(weight, src.load(names[fmt.scale]), block)

    def compute() -> dict[str, torch.Tensor]:
        members = [ExpertWeights.from_tensors({role: load(j, fmt) for role, fmt in formats.items()})
                   for j in group.members]
        merged = merge_experts(members, group.weights, align=group.align)
        first = tensors.experts[group.members[0]]
        stored: dict[str, torch.Tensor] = {}
        for role, fmt in formats.items():
            value = getattr(merged, role)
            weight_info = src.tensors[first[fmt.weight]]
            if fmt.scale is None:
                stored[fmt.weight] = value.to(DTYPES[weight_info.dtype])
            else:
                scale_info = src.tensors[first[fmt.scale]]
                q, scale = quantise_fp8(value, scale_info.shape, block, dtype=DTYPES[weight_info.dtype],
                                        scale_dtype=DTYPES[scale_info.dtype])
                stored[fmt.weight], stored[fmt.scale] = q, scale
            if fmt.input_scale is not None:  # static activation scale: the widest member's
                scales = [src.load(tensors.experts[j][fmt.input_scale]) for j in group.members]
                stored[fmt.input_scale] = torch.stack(scales).amax(dim=0)
        return {roles.expert_key(layer, j, name): t for j in group.members for name, t in stored.items()}

    return compute


# -- fused tensors (one row per expert, oriented as the adapter says) -----------------------------------
def _merged_fused(src: ShardReader, arch: MoEArch, layer: int, tensors: LayerTensors, groups: list[ExpertGroup]
                  ) -> list[OutputTensor]:
    names = arch.fused_tensor_names(set(tensors.fused))
    if names is None:
        raise CheckpointError(f"layer {layer}: cannot merge {arch.model_type} fused experts stored as "
                              f"{sorted(tensors.fused)}")
    keys = [tensors.fused[name] for name in names]
    if all(len(g.members) == 1 for g in groups):
        return [copied(k, src.tensors[k]) for k in keys]

    def compute() -> dict[str, torch.Tensor]:
        stored = {name: src.load(key) for name, key in zip(names, keys, strict=True)}
        new = {name: tensor.clone() for name, tensor in stored.items()}
        for group in groups:
            if len(group.members) == 1:
                continue
            members = [arch.fused_expert(stored, j) for j in group.members]
            rows = arch.fused_rows(merge_experts(members, group.weights, align=group.align), stored)
            for j in group.members:
                for name, row in rows.items():
                    new[name][j] = row
        return {key: new[name] for name, key in zip(names, keys, strict=True)}

    return [OutputTensor(k, src.tensors[k].dtype, src.tensors[k].shape, src.tensors[k], compute=compute,
                         cache_key=(layer, "fused")) for k in keys]
