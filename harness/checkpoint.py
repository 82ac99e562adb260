"""Plan + source checkpoint -> compressed checkpoint, streamed tensor by tensor.

The writer never holds the model: each output shard is written from a header computed
up front, then tensor after tensor. A tensor the plan leaves alone, or renames (pruned
experts renumbered), or slices along its first dimension (router rows, fused Llama-4
experts) is copied as byte ranges of the source file by the kernel (`sendfile`); only
tensors that change (correction biases sliced along their last dimension, merged
experts) pass through torch, one merge group at a time. So memory stays near the size
of one merge group, and FP8 / packed-int4 expert tensors travel with their experts
whatever their companion tensors are called.

Merged checkpoints use the paper's materialisation, "shared_slots": every router slot
is kept and the members of a cluster hold identical (merged) weights; parameter counts
count each distinct expert once. So layers may have different numbers of distinct
experts (M-SMoE's global dominance) while config.json keeps one expert count. The
output directory appears atomically (written beside it under a temporary name, then
renamed), so a killed write leaves nothing at `out`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.archs import get_arch, read_config
from harness.archs.base import ExpertWeights, MoEArch
from harness.atomic import make_temp_dir
from harness.merging import merge_experts
from harness.plan import ExpertGroup, Plan
from harness.quantisation import (
    FP8_DTYPES,
    FP8_SCALE_NAMES,
    PACKED_NAME,
    QUANT_COMPANIONS,
    QuantisationError,
    dequantise_fp8,
    detect_format,
    packed_numel,
    quantise_fp8,
    quantization_config,
)

MATERIALISATIONS = ("shared_slots",)
INDEX_NAME = "model.safetensors.index.json"
# Top-level files of the source that are not copied: weights (rewritten), and what the writer regenerates.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")
_REGENERATED = {"config.json", INDEX_NAME, "pytorch_model.bin.index.json", "recipe.json", "plan.json"}

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class CheckpointError(ValueError):
    """The plan cannot be applied to this checkpoint; the message says why and what to change."""


# -- safetensors, read by byte range ---------------------------------------------------------------
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


class SafetensorsCheckpoint:
    """All tensors of a checkpoint directory (sharded with an index, or single files)."""

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        index = self.model_dir / INDEX_NAME
        if index.is_file():
            names = dict.fromkeys(json.loads(index.read_text())["weight_map"].values())
            self.files = [self.model_dir / name for name in names]
        else:
            self.files = sorted(self.model_dir.glob("*.safetensors"))
        if not self.files:
            raise FileNotFoundError(f"no *.safetensors files in {self.model_dir}: the writer reads safetensors "
                                    "checkpoints only (convert .bin weights first)")
        self.tensors: dict[str, TensorInfo] = {}
        self.metadata: dict[Path, dict[str, str]] = {}
        for path in self.files:
            infos, self.metadata[path] = read_header(path)
            clash = self.tensors.keys() & infos.keys()
            if clash:
                raise CheckpointError(f"tensor {sorted(clash)[0]!r} appears in more than one file of {self.model_dir}")
            self.tensors.update(infos)

    def load(self, key: str) -> torch.Tensor:
        return load_range(self.tensors[key])


def load_range(info: TensorInfo) -> torch.Tensor:
    """One tensor, read straight from its bytes."""
    dtype = DTYPES[info.dtype]
    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=dtype)
    buffer = bytearray(info.nbytes)
    with open(info.file, "rb") as handle:
        handle.seek(info.start)
        if handle.readinto(buffer) != info.nbytes:
            raise CheckpointError(f"{info.file} is truncated")
    return torch.frombuffer(buffer, dtype=dtype).reshape(info.shape)


# -- where the routed experts live -----------------------------------------------------------------
@dataclass(frozen=True)
class Role:
    """What a hub tensor is to the writer."""

    kind: str  # other | expert | fused | router | bias | extra_layer
    layer: int = -1
    expert: int = -1
    name: str = ""  # expert: the key after `experts.{j}.`; fused/router: after `experts.` / the router prefix


@dataclass
class LayerTensors:
    experts: dict[int, dict[str, str]] = field(default_factory=dict)  # j -> name -> key
    fused: dict[str, str] = field(default_factory=dict)  # name -> key
    router: dict[str, str] = field(default_factory=dict)  # name -> key
    bias: str | None = None


class ExpertLayout:
    """Classifies hub keys of one family's checkpoint (routed experts, routers, correction biases)."""

    def __init__(self, arch: MoEArch, keys: Iterable[str]):
        self.arch = arch
        self.block = arch.hub_block_attr or arch.block_attr
        self.router_prefix = f"{self.block}.{arch.router_attr}."
        marker = re.compile(rf"^(.*?)layers\.\d+\.{re.escape(self.block)}\.experts\.")
        keys = list(keys)
        prefixes = sorted({m.group(1) for key in keys if (m := marker.match(key))})
        if not prefixes:
            raise CheckpointError(f"no routed-expert tensors found: a {arch.model_type} checkpoint should have keys "
                                  f"like 'model.layers.N.{self.block}.experts...'")
        if len(prefixes) > 1:
            raise CheckpointError(f"routed experts under several prefixes {prefixes}; expected one decoder stack")
        self.prefix = prefixes[0]
        self._layer = re.compile(rf"^{re.escape(self.prefix)}layers\.(\d+)\.(.+)$")
        self.num_layers = int(arch.config["num_hidden_layers"])

    def role(self, key: str) -> Role:
        match = self._layer.match(key)
        if not match:
            return Role("other")
        layer, rel = int(match.group(1)), match.group(2)
        if layer >= self.num_layers:  # e.g. multi-token-prediction layers, outside the model's forward
            return Role("extra_layer", layer)
        experts = f"{self.block}.experts."
        if rel.startswith(experts):
            tail = rel[len(experts):]
            head, _, name = tail.partition(".")
            if head.isdigit():
                return Role("expert", layer, int(head), name)
            return Role("fused", layer, name=tail)
        if rel == self.arch.correction_bias_key:
            return Role("bias", layer)
        if rel.startswith(self.router_prefix):
            return Role("router", layer, name=rel[len(self.router_prefix):])
        return Role("other", layer)

    def key(self, layer: int, rel: str) -> str:
        return f"{self.prefix}layers.{layer}.{rel}"

    def expert_key(self, layer: int, expert: int, name: str) -> str:
        return self.key(layer, f"{self.block}.experts.{expert}.{name}")

    def inventory(self, keys: Iterable[str]) -> dict[int, LayerTensors]:
        layers: dict[int, LayerTensors] = {}
        for key in keys:
            role = self.role(key)
            if role.kind in ("other", "extra_layer"):
                continue
            entry = layers.setdefault(role.layer, LayerTensors())
            if role.kind == "expert":
                entry.experts.setdefault(role.expert, {})[role.name] = key
            elif role.kind == "fused":
                entry.fused[role.name] = key
            elif role.kind == "router":
                entry.router[role.name] = key
            else:
                entry.bias = key
        return {i: t for i, t in sorted(layers.items()) if t.experts or t.fused}


# -- what to write -----------------------------------------------------------------------------------
@dataclass
class Output:
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


def _copy(key: str, info: TensorInfo, new_key: str | None = None) -> Output:
    return Output(new_key or key, info.dtype, info.shape, info, ranges=[(info.start, info.end)])


def _select_rows(key: str, info: TensorInfo, rows: list[int]) -> Output:
    """Rows of dim 0 of a contiguous tensor: byte ranges, adjacent ones joined."""
    row = info.nbytes // info.shape[0]
    ranges: list[tuple[int, int]] = []
    for r in rows:
        start = info.start + r * row
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], start + row)
        else:
            ranges.append((start, start + row))
    return Output(key, info.dtype, (len(rows), *info.shape[1:]), info, ranges=ranges)


def _select_last(key: str, info: TensorInfo, index: list[int]) -> Output:
    def compute() -> dict[str, torch.Tensor]:
        return {key: load_range(info)[..., index].contiguous()}

    return Output(key, info.dtype, (*info.shape[:-1], len(index)), info, compute=compute, cache_key=("last", key))


@dataclass
class _Job:
    outputs: list[Output]
    dropped: list[str]
    new_count: int
    quantisation: str | None


def _check_layers(plan: Plan, layers: dict[int, LayerTensors], src: SafetensorsCheckpoint, arch: MoEArch) -> None:
    missing, extra = sorted(set(layers) - set(plan.layers)), sorted(set(plan.layers) - set(layers))
    if missing or extra:
        raise CheckpointError(f"the plan does not match the checkpoint's MoE layers: checkpoint layers without a "
                              f"plan {missing}, plan layers without routed experts {extra}. "
                              f"Was the plan made for this model?")
    for i, tensors in layers.items():
        expected = plan.layers[i].num_experts
        if tensors.experts and sorted(tensors.experts) != list(range(expected)):
            raise CheckpointError(f"layer {i} stores experts {sorted(tensors.experts)[:5]}... "
                                  f"({len(tensors.experts)} of them) but the plan expects {expected}")
        for name, key in tensors.fused.items():
            if src.tensors[key].shape[0] != expected:
                raise CheckpointError(f"layer {i}: fused expert tensor {name} has {src.tensors[key].shape[0]} "
                                      f"experts, the plan expects {expected}")
        if expected != arch.num_experts:
            raise CheckpointError(f"layer {i}: the plan has {expected} experts, config.json says {arch.num_experts}")


def _check_routing(plan: Plan, arch: MoEArch, new_count: int) -> None:
    """The compressed routers must still work: the same rule the methods plan with."""
    from harness.methods.constraints import ExpertConstraints

    constraints = ExpertConstraints.from_arch(arch)
    reason = constraints.why_infeasible(new_count)
    if reason is not None:
        raise CheckpointError(f"the plan keeps {new_count} of {arch.num_experts} experts per layer, which the "
                              f"router cannot use: {reason}")
    if constraints.n_group > 1 and plan.kind == "prune":
        per_new = new_count // constraints.n_group
        for i, layer_plan in plan.layers.items():
            for n, j in enumerate(layer_plan.kept):
                if j // constraints.group_size != n // per_new:
                    raise CheckpointError(
                        f"layer {i}: new expert {n} (original {j}) would move from router group "
                        f"{j // constraints.group_size} to group {n // per_new}; with n_group="
                        f"{constraints.n_group} a pruning plan must keep {per_new} experts of every group, "
                        f"listed group by group")


def _quantisation_name(src: SafetensorsCheckpoint, config: dict) -> str | None:
    names = {key.rsplit(".", 1)[-1] for key in src.tensors}
    if "weight_packed" in names:
        return "packed-int (compressed-tensors)"
    if any(info.dtype.startswith("F8") for info in src.tensors.values()):
        return "fp8"
    method = quantization_config(config).get("quant_method")
    return str(method) if method else None


def _plan_outputs(plan: Plan, src: SafetensorsCheckpoint, layout: ExpertLayout, arch: MoEArch,
                  config: dict) -> _Job:
    """Every output tensor and its producer; raises before anything is written."""
    layers = layout.inventory(src.tensors)
    _check_layers(plan, layers, src, arch)
    new_count = plan.num_groups if plan.kind == "prune" else arch.num_experts
    _check_routing(plan, arch, new_count)
    block = quantization_config(config).get("weight_block_size")
    outputs: list[Output] = []
    dropped: list[str] = []
    for key, info in src.tensors.items():
        role = layout.role(key)
        if role.kind == "other":
            outputs.append(_copy(key, info))
        elif role.kind == "extra_layer":
            dropped.append(key)
        elif plan.kind == "merge" and role.kind in ("router", "bias"):
            outputs.append(_copy(key, info))  # shared slots: every router slot stays
        elif role.kind == "router":
            kept = plan.layers[role.layer].kept
            if not info.shape or info.shape[0] != arch.num_experts:
                raise CheckpointError(f"router tensor {key} has shape {list(info.shape)}; expected "
                                      f"{arch.num_experts} rows (one per expert) to slice")
            outputs.append(_select_rows(key, info, kept))
        elif role.kind == "bias":
            if not info.shape or info.shape[-1] != arch.num_experts:
                raise CheckpointError(f"correction bias {key} has shape {list(info.shape)}; expected its last "
                                      f"dimension to be the {arch.num_experts} experts")
            outputs.append(_select_last(key, info, plan.layers[role.layer].kept))
    for i, tensors in layers.items():
        layer_plan = plan.layers[i]
        if plan.kind == "prune":
            outputs += _prune_layer(layout, src, i, tensors, layer_plan.kept)
        else:
            outputs += _merge_layer(layout, src, arch, i, tensors, layer_plan.groups, block)
    return _Job(outputs, dropped, new_count, _quantisation_name(src, config))


def _prune_layer(layout: ExpertLayout, src: SafetensorsCheckpoint, layer: int, tensors: LayerTensors,
                 kept: list[int]) -> list[Output]:
    outputs = []
    for n, j in enumerate(kept):
        for name, key in tensors.experts.get(j, {}).items():
            outputs.append(_copy(key, src.tensors[key], layout.expert_key(layer, n, name)))
    for key in tensors.fused.values():
        outputs.append(_select_rows(key, src.tensors[key], kept))
    return outputs


# -- merging, per-expert layout ----------------------------------------------------------------------
@dataclass(frozen=True)
class _ProjFormat:
    """How one projection of an expert is stored: plain, or FP8 with a block scale."""

    weight: str  # name of the weight tensor, e.g. "gate_proj.weight"
    scale: str | None = None  # e.g. "gate_proj.weight_scale_inv"
    input_scale: str | None = None


def _proj_formats(arch: MoEArch, names: dict[str, str], src: SafetensorsCheckpoint, where: str
                  ) -> dict[str, _ProjFormat]:
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


def _merge_layer(layout: ExpertLayout, src: SafetensorsCheckpoint, arch: MoEArch, layer: int,
                 tensors: LayerTensors, groups: list[ExpertGroup], block: list[int] | None) -> list[Output]:
    if tensors.fused:
        return _merge_fused(layout, src, arch, layer, tensors, groups)
    outputs = []
    for g, group in enumerate(groups):
        where = f"layer {layer}, group {group.members}"
        if len(group.members) == 1:
            j = group.members[0]
            outputs += [_copy(key, src.tensors[key]) for key in tensors.experts[j].values()]
            continue
        names = tensors.experts[group.members[0]]
        for j in group.members[1:]:
            other = tensors.experts[j]
            if sorted(other) != sorted(names) or any(
                    src.tensors[other[n]].shape != src.tensors[names[n]].shape for n in names):
                raise CheckpointError(f"{where}: experts {group.members[0]} and {j} are stored differently")
        formats = _proj_formats(arch, names, src, where)
        compute = _group_merger(layout, src, layer, tensors, group, formats, block)
        for j in group.members:
            for key in tensors.experts[j].values():
                info = src.tensors[key]
                outputs.append(Output(key, info.dtype, info.shape, info, compute=compute, cache_key=(layer, g)))
    return outputs


def _group_merger(layout: ExpertLayout, src: SafetensorsCheckpoint, layer: int, tensors: LayerTensors,
                  group: ExpertGroup, formats: dict[str, _ProjFormat], block: list[int] | None
                  ) -> Callable[[], dict[str, torch.Tensor]]:
    def load(j: int, fmt: _ProjFormat) -> torch.Tensor:
        names = tensors.experts[j]
        weight = src.load(names[fmt.weight])
        if fmt.scale is None:
            return weight
        return dequantise_fp8(weight, src.load(names[fmt.scale]), block)

    def compute() -> dict[str, torch.Tensor]:
        members = [ExpertWeights(**{role: load(j, fmt) for role, fmt in formats.items()}) for j in group.members]
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
        return {layout.expert_key(layer, j, name): t for j in group.members for name, t in stored.items()}

    return compute


# -- merging, fused layout (Llama-4: gate_up [E, H, 2I], down [E, I, H]) ------------------------------
def _merge_fused(layout: ExpertLayout, src: SafetensorsCheckpoint, arch: MoEArch, layer: int,
                 tensors: LayerTensors, groups: list[ExpertGroup]) -> list[Output]:
    names = arch.hub_fused_expert_names
    if names is None or set(tensors.fused) != set(names.values()):
        raise CheckpointError(f"layer {layer}: cannot merge fused experts stored as {sorted(tensors.fused)}; "
                              f"expected exactly {sorted((names or {}).values())} (unquantised)")
    gate_up_key, down_key = tensors.fused[names["gate_up"]], tensors.fused[names["down"]]
    if all(len(g.members) == 1 for g in groups):
        return [_copy(k, src.tensors[k]) for k in (gate_up_key, down_key)]

    def compute() -> dict[str, torch.Tensor]:
        gate_up, down = src.load(gate_up_key), src.load(down_key)
        inter = gate_up.shape[2] // 2
        new_gate_up, new_down = gate_up.clone(), down.clone()
        for group in groups:
            if len(group.members) == 1:
                continue
            members = [ExpertWeights(gate=gate_up[j, :, :inter].T, up=gate_up[j, :, inter:].T, down=down[j].T)
                       for j in group.members]
            merged = merge_experts(members, group.weights, align=group.align)
            fused = torch.cat([merged.gate.T, merged.up.T], dim=1).to(gate_up.dtype)
            for j in group.members:
                new_gate_up[j] = fused
                new_down[j] = merged.down.T.to(down.dtype)
        return {gate_up_key: new_gate_up, down_key: new_down}

    return [Output(k, src.tensors[k].dtype, src.tensors[k].shape, src.tensors[k], compute=compute,
                   cache_key=(layer, "fused")) for k in (gate_up_key, down_key)]


# -- writing -----------------------------------------------------------------------------------------
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


class _Computed:
    """The last computation's outputs: the outputs of one merge group are written together."""

    def __init__(self) -> None:
        self.key: Any = None
        self.values: dict[str, torch.Tensor] = {}

    def get(self, out: Output) -> torch.Tensor:
        if out.cache_key != self.key or out.key not in self.values:
            self.values, self.key = {}, None  # free the previous group first
            self.values, self.key = out.compute(), out.cache_key
        tensor = self.values[out.key]
        if DTYPE_NAMES.get(tensor.dtype) != out.dtype or tuple(tensor.shape) != out.shape:
            raise RuntimeError(f"internal error: {out.key} computed as {tensor.dtype} {tuple(tensor.shape)}, "
                               f"header says {out.dtype} {out.shape}")
        return tensor


def _write_shard(path: Path, outputs: list[Output], metadata: dict[str, str], fds: dict[Path, int],
                 computed: _Computed, advance: Callable[[int], Any]) -> None:
    header: dict[str, Any] = {}
    offset = 0
    for out in outputs:
        header[out.key] = {"dtype": out.dtype, "shape": list(out.shape), "data_offsets": [offset, offset + out.nbytes]}
        offset += out.nbytes
    header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # minus the umask
    try:
        _write_all(fd, memoryview(len(blob).to_bytes(8, "little") + blob))
        for out in outputs:
            if out.ranges is not None:
                src_fd = fds.get(out.anchor.file)
                if src_fd is None:
                    src_fd = fds[out.anchor.file] = os.open(out.anchor.file, os.O_RDONLY)
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


def _write_shards(job: _Job, src: SafetensorsCheckpoint, out_dir: Path, progress: bool) -> dict[str, str]:
    """One output shard per source file that still has tensors; returns the weight map."""
    from tqdm.auto import tqdm

    rank = {path: r for r, path in enumerate(src.files)}
    by_file: dict[Path, list[Output]] = {}
    for out in job.outputs:
        by_file.setdefault(out.anchor.file, []).append(out)
    files = sorted(by_file, key=rank.__getitem__)
    weight_map: dict[str, str] = {}
    fds: dict[Path, int] = {}
    computed = _Computed()
    total = sum(out.nbytes for out in job.outputs)
    try:
        with tqdm(total=total, unit="B", unit_scale=True, desc="writing checkpoint", disable=not progress,
                  leave=False) as bar:
            for number, source_file in enumerate(files, 1):
                outputs = by_file[source_file]
                # Outputs of one computation next to each other, at the place of its first member.
                first: dict[Any, int] = {}
                for out in outputs:
                    if out.cache_key is not None:
                        first[out.cache_key] = min(first.get(out.cache_key, out.anchor.start), out.anchor.start)
                outputs.sort(key=lambda o: (first.get(o.cache_key, o.anchor.start), o.anchor.start, o.key))
                name = f"model-{number:05d}-of-{len(files):05d}.safetensors"
                metadata = {"format": "pt", **src.metadata.get(source_file, {})}
                _write_shard(out_dir / name, outputs, metadata, fds, computed, bar.update)
                weight_map.update({out.key: name for out in outputs})
    finally:
        for fd in fds.values():
            os.close(fd)
    return weight_map


# -- parameter counts ----------------------------------------------------------------------------------
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


def _logical_numel(key: str, info: TensorInfo, tensors: dict[str, TensorInfo], num_bits: int = 4) -> int:
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


_Part = tuple[str, Path, int, int]  # (tensor name, file, first byte, end byte)


def _cheap_digest(parts: list[_Part]) -> bytes:
    """Names, sizes and 4 KiB at each end of each tensor: equal for identical experts, rarely for others."""
    digest = hashlib.blake2b(digest_size=20)
    for name, path, start, end in parts:
        digest.update(f"{name}:{end - start};".encode())
        with open(path, "rb") as handle:
            for a, b in [(start, end)] if end - start <= 8192 else [(start, start + 4096), (end - 4096, end)]:
                handle.seek(a)
                chunk = handle.read(b - a)
                if len(chunk) != b - a:
                    raise CheckpointError(f"{path} is truncated: tensor {name} ends at byte {end}, "
                                          f"the file at {a + len(chunk)}")
                digest.update(chunk)
    return digest.digest()


class _Bytes:
    """Byte-by-byte comparison of tensors in the checkpoint's files, a few MiB at a time.

    (Plain reads, not memory maps: mapped pages would count as this process's memory.)
    """

    CHUNK = 8 << 20

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}

    def _fd(self, path: Path) -> int:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]

    def same(self, a: list[_Part], b: list[_Part]) -> bool:
        if [(n, e - s) for n, _, s, e in a] != [(n, e - s) for n, _, s, e in b]:
            return False
        for (_, pa, sa, ea), (_, pb, sb, _eb) in zip(a, b, strict=True):
            for offset in range(0, ea - sa, self.CHUNK):
                n = min(self.CHUNK, ea - sa - offset)
                if os.pread(self._fd(pa), n, sa + offset) != os.pread(self._fd(pb), n, sb + offset):
                    return False
        return True

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _distinct(experts: dict[int, list[_Part]]) -> list[int]:
    """One representative per group of byte-identical experts (candidates by cheap digest, then compared)."""
    by_cheap: dict[bytes, list[int]] = {}
    for j, parts in sorted(experts.items()):
        by_cheap.setdefault(_cheap_digest(parts), []).append(j)
    files = _Bytes()
    keep = []
    try:
        for same in by_cheap.values():
            representatives: list[int] = []
            for j in same:
                if not any(files.same(experts[r], experts[j]) for r in representatives):
                    representatives.append(j)
            keep += representatives
    finally:
        files.close()
    return sorted(keep)


def parameter_counts(model_dir: str | Path) -> ParameterCounts:
    """Parameter counts of a written checkpoint, from its tensors (headers, plus expert bytes to find shared ones)."""
    ckpt = SafetensorsCheckpoint(model_dir)
    arch = get_arch(model_dir)
    layout = ExpertLayout(arch, ckpt.tensors)
    dense = extra = 0
    num_bits = _packed_bits(model_dir, ckpt.tensors)
    parts: dict[int, dict[int, list[_Part]]] = {}
    sizes: dict[int, dict[int, int]] = {}
    for key, info in ckpt.tensors.items():
        role = layout.role(key)
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


# -- the checkpoint -------------------------------------------------------------------------------------
@dataclass
class CheckpointInfo:
    path: Path
    total_params: int
    activated_params: int
    recipe: dict[str, Any]


def _new_config(config: dict, arch: MoEArch, new_count: int, dropped: list[str]) -> dict:
    new = copy.deepcopy(config)
    target = new["text_config"] if new.get("model_type") == "llama4" and "text_config" in new else new
    keys = [k for k in (arch.expert_count_key, *arch.expert_count_aliases) if k in target]
    if not keys:
        raise CheckpointError(f"config.json has no {arch.expert_count_key!r} to update")
    for key in keys:
        target[key] = new_count
    if dropped and target.get("num_nextn_predict_layers"):
        target["num_nextn_predict_layers"] = 0  # its layers are not in the plan and were dropped
    return new


def _copy_side_files(source: Path, out: Path) -> list[str]:
    """Tokenizer, chat template, generation config and other top-level files (not weights)."""
    copied = []
    for path in sorted(source.iterdir()):
        if path.is_file() and path.name not in _REGENERATED and not path.name.endswith(_WEIGHT_SUFFIXES):
            shutil.copyfile(path, out / path.name)  # new file: the umask decides its mode
            copied.append(path.name)
    return copied


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _install(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished directory into place; an old one is replaced only when asked."""
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} already exists; remove it or pass overwrite=True")
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, trash / out.name)
        os.rename(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, out)


def write_checkpoint(plan: Plan, source: str | Path, out: str | Path, *, materialisation: str = "shared_slots",
                     recipe_extra: dict | None = None, progress: bool = True, overwrite: bool = False
                     ) -> CheckpointInfo:
    """Apply `plan` to the checkpoint at `source` and write the result to `out` (atomically).

    Pruning plans drop and renumber experts; merging plans use `materialisation`
    ("shared_slots": every router slot kept, a cluster's members share the merged weights).
    The directory holds the shards, a fresh index, the updated config.json, the source's
    tokenizer and generation files, plan.json and recipe.json.
    """
    import harness
    from harness.calibration.checkpoint_io import model_fingerprint

    source, out = Path(source), Path(out)
    if materialisation not in MATERIALISATIONS:
        raise ValueError(f"unknown materialisation {materialisation!r}; available: {', '.join(MATERIALISATIONS)}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; remove it or pass overwrite=True")
    if out.resolve() == source.resolve():
        raise ValueError("the output directory must differ from the source checkpoint")
    config = read_config(source)
    arch = get_arch(config)
    src = SafetensorsCheckpoint(source)
    layout = ExpertLayout(arch, src.tensors)
    job = _plan_outputs(plan, src, layout, arch, config)
    new_config = _new_config(config, arch, job.new_count, job.dropped)
    recipe: dict[str, Any] = {
        "harness_version": harness.__version__,
        "method": plan.method,
        "method_config": plan.method_config,
        "ratio": plan.ratio,
        "kind": plan.kind,
        "calibration_key": plan.calibration_key,
        "plan_hash": plan.plan_hash(),
        "plan_format_version": plan.format_version,
        "materialisation": materialisation if plan.kind == "merge" else "pruned",
        "family": arch.model_type,
        "expert_count_key": arch.expert_count_key,
        # distinct: new experts per layer, one number when every layer has the same count, else
        # {layer: count} (M-SMoE's global dominance); distinct_total sums them over the layers.
        "experts_per_layer": {"source": arch.num_experts, "router_slots": job.new_count,
                              "distinct": plan.num_groups if plan.uniform else
                              {str(i): n for i, n in sorted(plan.groups_per_layer.items())},
                              "distinct_total": plan.total_groups},
        "quantisation": job.quantisation,
        "source": {"path": str(source.resolve()), "fingerprint": model_fingerprint(source)},
        "dropped_tensors": job.dropped,
    }
    clash = sorted(set(recipe_extra or {}) & (set(recipe) | {"total_params", "activated_params"}))
    if clash:
        raise ValueError(f"recipe_extra may not override {clash}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, prefix=f".{out.name}.tmp-")
    try:
        weight_map = _write_shards(job, src, tmp, progress)
        total_size = sum(o.nbytes for o in job.outputs)
        _write_json(tmp / INDEX_NAME, {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(
            weight_map.items()))})
        _write_json(tmp / "config.json", new_config)
        recipe["copied_files"] = _copy_side_files(source, tmp)
        plan.save(tmp / "plan.json")
        counts, source_counts = parameter_counts(tmp), parameter_counts(source)
        recipe["source"].update(total_params=source_counts.total, activated_params=source_counts.activated)
        recipe.update(total_params=counts.total, activated_params=counts.activated,
                      routed_experts=counts.routed_experts, **(recipe_extra or {}))
        _write_json(tmp / "recipe.json", recipe)
        _install(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CheckpointInfo(path=out, total_params=counts.total, activated_params=counts.activated, recipe=recipe)
