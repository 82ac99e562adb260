"""What a sweep will cost, before it runs: checkpoint bytes, disk, memory, tokens and time.

Checkpoint bytes are exact: the writer's own plan of output tensors (`plan_outputs`, which reads only shard
headers) is sized with the writer's own shard layout and header, plus the side files it writes. Before a
plan exists, a nominal plan with the same kept count (pruning) or the same slots (merging keeps every slot)
gives the same tensor bytes: which experts survive does not change the size. A model whose weights are not
here is laid out from its config (harness.inventory), in its stored dtypes and quantised formats.

Memory is an estimate (a model of what the calibration drivers hold, checked against measured peaks in
benchmarks/costs_memory.py); tokens are upper bounds (prompts x max_tokens).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.inventory import ITEMSIZE, Inventory, Tensor, from_config, from_headers, moe_layer_indices

# recipe.json is written after the weights with counts known only then; this is its size, near enough.
RECIPE_BYTES_ESTIMATE = 1000


def human(n: float) -> str:
    """Bytes in binary units, 3 significant digits."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n} B"


class _HeaderView:
    """A ShardReader stand-in over an inventory: the writer's planning needs keys, dtypes, shapes and files."""

    def __init__(self, inventory: Inventory, metadata: dict[str, str] | None = None):
        from harness.checkpoint.shards import TensorInfo

        file = Path("model.safetensors")
        self.files = [file]
        self.metadata = {file: dict(metadata or {})}
        self.tensors: dict[str, Any] = {}
        offset = 0
        for key, t in inventory.items():
            self.tensors[key] = TensorInfo(file, t.dtype, t.shape, offset, offset + t.nbytes)
            offset += t.nbytes


@dataclass
class ModelShape:
    """A model as the cost estimates see it: its config, its tensors and where they came from."""

    config: dict[str, Any]
    inventory: Inventory
    exact: bool  # tensors from the shard headers (True) or laid out from config.json (False)
    reader: Any = None  # the ShardReader (or a stand-in) the writer would plan with
    side_files: dict[str, int] = field(default_factory=dict)  # top-level non-weight files the writer copies

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> ModelShape:
        from harness.archs import read_config
        from harness.checkpoint.shards import ShardReader

        model_dir = Path(model_dir)
        config = read_config(model_dir)
        reader = ShardReader(model_dir)
        inventory = {k: Tensor(i.dtype, tuple(i.shape)) for k, i in reader.tensors.items()}
        return cls(config, inventory, True, reader, _side_files(model_dir))

    @classmethod
    def from_config(cls, config: dict[str, Any], side_files: dict[str, int] | None = None) -> ModelShape:
        inventory = from_config(config)
        return cls(config, inventory, False, _HeaderView(inventory), dict(side_files or {}))

    @property
    def text_config(self) -> dict[str, Any]:
        return self.config.get("text_config") or self.config

    @property
    def packed_bits(self) -> int:
        from harness.quantisation import quantization_config

        groups = list((quantization_config(self.config).get("config_groups") or {}).values())
        return int(((groups[0].get("weights") or {}) if groups else {}).get("num_bits", 4))

    @property
    def bytes(self) -> int:
        return sum(t.nbytes for t in self.inventory.values())

    def layer_of(self, key: str) -> int | None:
        marker = "layers."
        at = key.find(marker)
        if at < 0:
            return None
        head = key[at + len(marker):].split(".", 1)[0]
        return int(head) if head.isdigit() else None

    def numel_in_forward(self) -> int:
        """Parameters the model's forward uses (MTP layers left out), as dequantised elements."""
        layers = self.text_config["num_hidden_layers"]
        return sum(_logical_numel(k, t, self.packed_bits) for k, t in self.inventory.items()
                   if (self.layer_of(k) or 0) < layers)

    def layer_numel(self) -> dict[int, int]:
        """Dequantised elements of each decoder layer of the forward."""
        layers = self.text_config["num_hidden_layers"]
        found: dict[int, int] = {}
        for k, t in self.inventory.items():
            i = self.layer_of(k)
            if i is not None and i < layers:
                found[i] = found.get(i, 0) + _logical_numel(k, t, self.packed_bits)
        return found

    def layer_bytes(self) -> dict[int, int]:
        """Stored bytes of each decoder layer (quantised as stored)."""
        found: dict[int, int] = {}
        for k, t in self.inventory.items():
            i = self.layer_of(k)
            if i is not None:
                found[i] = found.get(i, 0) + t.nbytes
        return found


def _logical_numel(key: str, t: Tensor, bits: int) -> int:
    """Elements of the dequantised weight this tensor stands for (scales and shapes count as nothing)."""
    if key.endswith(".weight_packed"):
        return t.shape[0] * t.shape[1] * (32 // bits)
    if key.endswith((".weight_scale", ".weight_scale_inv", ".weight_shape", ".input_scale")):
        return 0
    return t.numel


def _side_files(model_dir: Path) -> dict[str, int]:
    from harness.checkpoint.writer import _REGENERATED, _WEIGHT_SUFFIXES

    return {p.name: p.stat().st_size for p in sorted(model_dir.iterdir()) if p.is_file()
            and p.name not in _REGENERATED and not p.name.endswith(_WEIGHT_SUFFIXES)}


# -- checkpoints ---------------------------------------------------------------------------------------
def nominal_plan(config: dict[str, Any], moe_layers: list[int], ratio: float, kind: str):
    """A plan with the kept count (pruning) or group count (merging) of `ratio`: the same bytes as any
    real plan of that method and ratio (merging keeps every router slot, so any grouping does)."""
    from harness.archs import get_arch
    from harness.methods.constraints import ExpertConstraints
    from harness.plan import ExpertGroup, LayerPlan, Plan

    arch = get_arch(config)
    constraints = ExpertConstraints.from_arch(arch)
    kept = constraints.target_count(ratio)
    per, size = kept // constraints.n_group, constraints.group_size
    groups: list[ExpertGroup] = []
    for g in range(constraints.n_group):
        members = list(range(g * size, (g + 1) * size))
        if kind == "prune":
            groups += [ExpertGroup.single(j) for j in members[:per]]
        else:
            first = members[: size - per + 1]
            groups.append(ExpertGroup(members=first, weights=[1.0 / len(first)] * len(first)))
            groups += [ExpertGroup.single(j) for j in members[size - per + 1:]]
    layers = {i: LayerPlan(num_experts=arch.num_experts, groups=groups) for i in moe_layers}
    return Plan(method=f"nominal_{kind}", ratio=ratio, kind=kind, layers=layers)


@dataclass
class CheckpointCost:
    """Bytes of one compressed checkpoint directory."""

    total: int  # every file of the directory
    weights: int  # the safetensors shards (headers included)
    routed: int  # routed-expert tensors
    exact: bool  # from the source's headers (True) or its config (False)

    @property
    def other(self) -> int:
        """Everything else in the shards: attention, embeddings, dense layers, shared experts, routers."""
        return self.weights - self.routed


def checkpoint_cost(model: ModelShape, plan, materialisation: str = "shared_slots") -> CheckpointCost:
    """The bytes `write_checkpoint(plan, source, out)` writes: shards, index, config.json, copied side files,
    plan.json and recipe.json (the last estimated)."""
    from harness.archs import get_arch
    from harness.checkpoint.plan_outputs import plan_outputs
    from harness.checkpoint.roles import TensorRoles
    from harness.checkpoint.shard_writer import shard_bytes, shard_layout
    from harness.checkpoint.writer import _new_config

    arch = get_arch(model.config)
    roles = TensorRoles(arch, model.reader.tensors)
    job = plan_outputs(plan, model.reader, roles, arch, model.config)
    layout = shard_layout(job, model.reader)
    weights = sum(shard_bytes(outputs, metadata) for _, outputs, metadata in layout)
    routed = sum(o.nbytes for o in job.outputs if roles.role(o.key).kind in ("expert", "fused"))
    weight_map = {out.key: name for name, outputs, _ in layout for out in outputs}
    index = _json_size({"metadata": {"total_size": sum(o.nbytes for o in job.outputs)},
                        "weight_map": dict(sorted(weight_map.items()))})
    config = _json_size(_new_config(model.config, arch, job.new_count, job.dropped))
    plan_json = len(json.dumps(plan.model_dump(mode="json"), indent=1, sort_keys=True)) + 1
    total = weights + index + config + plan_json + sum(model.side_files.values()) + RECIPE_BYTES_ESTIMATE \
        + len(json.dumps(job.dropped))
    return CheckpointCost(total, weights, routed, model.exact)


def _json_size(payload: Any) -> int:
    return len(json.dumps(payload, indent=2, sort_keys=True)) + 1


def directory_bytes(path: str | Path) -> int:
    """Bytes of every file under `path` (what a checkpoint takes on disk, apart from block rounding)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# -- memory --------------------------------------------------------------------------------------------
# Host memory of the Python process before any model is loaded (interpreter, torch, transformers, the
# tokenizer and the calibration rows' bookkeeping), measured on this harness's CPU install
# (benchmarks/costs_memory.py); GPU runtimes add their own CUDA context (below).
HOST_RUNTIME_BYTES = 700 * 2**20
CUDA_CONTEXT_BYTES = 600 * 2**20


@dataclass
class CalibrationMemory:
    """Peak memory of one calibration, in bytes: host and (when on GPUs) per GPU."""

    host: int
    gpu_total: int  # over all GPUs (0 on CPU)
    weights: int  # the model in the calibration dtype (normal) or one layer (sequential)
    activations: int
    hidden_states: int = 0  # sequential mode: every row's hidden state between layers


def _dtype_bytes(name: str) -> int:
    return {"float32": 4, "bfloat16": 2, "float16": 2}[name]


def calibration_memory(model: ModelShape, *, samples: int, length: int, batch_size: int, dtype: str,
                       sequential: bool, on_gpu: bool, extras: frozenset[str] = frozenset()) -> CalibrationMemory:
    """Peak host and GPU memory of calibrating `model` (an estimate; see the module docstring).

    Normal mode holds the whole model in the calibration dtype plus one batch's activations; sequential
    mode holds the embeddings, one decoder layer (and its stored form while it is dequantised), every row's
    hidden state between layers and the per-batch attention inputs."""
    c = model.text_config
    db = _dtype_bytes(dtype)
    H = c["hidden_size"]
    heads = c.get("num_attention_heads", 1)
    E = _num_experts(c)
    moe = len(moe_layer_indices(c))
    inter = max(c.get("moe_intermediate_size") or 0, c.get("intermediate_size") or 0,
                c.get("intermediate_size_mlp") or 0)
    tokens = batch_size * length
    # One batch through one layer: residual, normed input, q/k/v/o, attention scores (float32 softmax),
    # the expert MLP's gate/up/act, routing logits; the observer's expert outputs and float64 sums.
    activations = tokens * db * (10 * H + 3 * inter + E) + batch_size * heads * length * length * 4 * 2
    stats = moe * E * 8 * 8 + (moe * E * E * 8 if "router_similarity" in extras else 0) \
        + (moe * E * H * 8 if "mean_out" in extras else 0)
    rows = samples * length * 8 * 2  # input ids and attention mask (int64)
    numel = model.numel_in_forward()
    if not sequential:
        weights = numel * db
        if on_gpu:
            return CalibrationMemory(HOST_RUNTIME_BYTES + rows + stats + max(model.layer_bytes().values(), default=0),
                                     weights + activations + CUDA_CONTEXT_BYTES, weights, activations)
        return CalibrationMemory(HOST_RUNTIME_BYTES + rows + stats + weights + activations, 0, weights, activations)
    layer = max(model.layer_numel().values(), default=0) * db
    stored_layer = max(model.layer_bytes().values(), default=0)
    embed = c["vocab_size"] * H * db
    hidden = samples * length * H * db
    # Per batch, every layer's inputs are kept: position embeddings (cos, sin) and the attention mask.
    head_dim = c.get("head_dim") or H // max(heads, 1)
    kwargs = math.ceil(samples / batch_size) * (batch_size * length * head_dim * 2 * 4
                                                + batch_size * length * length)
    work = layer + stored_layer + activations
    if on_gpu:
        return CalibrationMemory(HOST_RUNTIME_BYTES + rows + stats + stored_layer, embed + work + hidden + kwargs
                                 + CUDA_CONTEXT_BYTES, layer, activations, hidden)
    return CalibrationMemory(HOST_RUNTIME_BYTES + rows + stats + embed + work + hidden + kwargs, 0, layer,
                             activations, hidden)


def _num_experts(c: dict[str, Any]) -> int:
    for key in ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"):
        if c.get(key):
            return int(c[key])
    return 1


def serving_memory_per_gpu(weight_bytes: int, tensor_parallel: int) -> int:
    """Weights on each GPU at tensor parallelism `tensor_parallel` (vLLM shards every layer evenly)."""
    return math.ceil(weight_bytes / tensor_parallel)


__all__ = ["ITEMSIZE", "CheckpointCost", "ModelShape", "calibration_memory", "checkpoint_cost", "directory_bytes",
           "from_headers", "human", "nominal_plan", "serving_memory_per_gpu"]
