"""What a sweep will cost, before it runs: checkpoint bytes, disk, memory, tokens and time.

Checkpoint bytes are exact: the writer's own plan of output tensors (`plan_outputs`, which reads only shard
headers) is sized with the writer's own shard layout and header, plus the side files it writes. Before a
plan exists, a nominal plan with the same kept count (pruning) or the same slots (merging keeps every slot)
gives the same tensor bytes: which experts survive does not change the size. A model whose weights are not
here is laid out from its config (harness.checkpoint.inventory), in its stored dtypes and quantised formats.

Memory is an estimate (a model of what the calibration drivers hold, checked against measured peaks in
benchmarks/costs_memory.py); tokens are upper bounds (prompts x max_tokens).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.checkpoint.inventory import ITEMSIZE, Inventory, Tensor, from_config, from_headers, moe_layer_indices

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
        from harness.checkpoint.quantisation import quantization_config

        groups = list((quantization_config(self.config).get("config_groups") or {}).values())
        return int(((groups[0].get("weights") or {}) if groups else {}).get("num_bits", 4))

    @property
    def quantised(self) -> bool:
        """Stored in a quantised format (FP8 blocks, packed int4)."""
        from harness.checkpoint.quantisation import quantization_config

        return bool(quantization_config(self.config))

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

    def converted_numel(self, dtype: str) -> int:
        """Elements transformers copies out of the memory-mapped checkpoint when it loads it onto the CPU in
        `dtype`: tensors stored in another dtype, and per-expert tensors it regroups into fused ones (the others
        it uses in place; measured: Llama-4, whose experts are stored fused, holds its bfloat16 weights once)."""
        import re

        from harness.checkpoint.inventory import _DTYPE_NAMES

        layers = self.text_config["num_hidden_layers"]
        per_expert = re.compile(r"\.experts\.\d+\.")
        return sum(t.numel for k, t in self.inventory.items() if (self.layer_of(k) or 0) < layers
                   and (t.dtype != _DTYPE_NAMES[dtype] or per_expert.search(k)))

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
    hidden_states: int = 0  # sequential mode: every row's hidden state and layer inputs between layers


def _dtype_bytes(name: str) -> int:
    return {"float32": 4, "bfloat16": 2, "float16": 2}[name]


def calibration_memory(model: ModelShape, *, samples: int, length: int, batch_size: int, dtype: str,
                       sequential: bool, on_gpu: bool, extras: frozenset[str] = frozenset()) -> CalibrationMemory:
    """Peak host and GPU memory of calibrating `model` (an estimate; see the module docstring).

    What the drivers hold at their peak, as measured (benchmarks/costs_memory.py, tests/sweep/test_costs.py):
    normal mode, the whole model in the calibration dtype plus one batch's activations; an unquantised
    checkpoint is read by transformers through a memory map, so its stored bytes are resident too, while a
    quantised one is dequantised layer by layer (its stored layer, the float32 dequantised tensors and the
    result in the calibration dtype at once). Sequential mode holds the embeddings, one decoder layer as read
    (stored form, plus float32 while it is dequantised), regrouped into the module's layout and in the module
    (two copies in the calibration dtype), every row's hidden state between layers and the per-batch attention
    inputs."""
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
    quantised = model.quantised
    layer_numel = max(model.layer_numel().values(), default=0)
    layer = layer_numel * db
    stored_layer = max(model.layer_bytes().values(), default=0)
    # A layer as it is read: stored bytes, and float32 while a quantised one is dequantised.
    reading = stored_layer + (layer_numel * 4 if quantised else 0)
    if not sequential:
        weights = numel * db
        # Resident on the host besides the runtime: the memory-mapped checkpoint (unquantised), or one layer
        # being dequantised (quantised).
        loading = reading + layer if quantised else model.bytes
        if not quantised and not on_gpu:  # tensors used in place from the map are not held twice
            weights = model.converted_numel(dtype) * db
        if on_gpu:
            return CalibrationMemory(HOST_RUNTIME_BYTES + rows + stats + loading,
                                     weights + activations + CUDA_CONTEXT_BYTES, weights, activations)
        return CalibrationMemory(HOST_RUNTIME_BYTES + rows + stats + loading + weights + activations, 0, weights,
                                 activations)
    embed = c["vocab_size"] * H * db
    hidden = samples * length * H * db
    # Per batch, every layer's inputs are kept: position embeddings (cos, sin) and the attention mask.
    head_dim = c.get("head_dim") or H // max(heads, 1)
    kwargs = math.ceil(samples / batch_size) * (batch_size * length * head_dim * 2 * 4
                                                + batch_size * length * length)
    work = 2 * layer + activations
    if on_gpu:
        # the layer is read into host memory, then moved and dequantised on the GPU
        return CalibrationMemory(HOST_RUNTIME_BYTES + rows + stats + stored_layer, embed + reading + work + hidden
                                 + kwargs + CUDA_CONTEXT_BYTES, layer, activations, hidden + kwargs)
    return CalibrationMemory(HOST_RUNTIME_BYTES + rows + stats + embed + reading + work + hidden + kwargs, 0,
                             layer, activations, hidden + kwargs)


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


# -- the seed models' configs ---------------------------------------------------------------------------
def seed_model_config(hub_id: str) -> dict[str, Any]:
    """A seed model's config.json, rebuilt from harness/seed_models.yaml (routing keys, sizes, quantisation)
    for estimates where the real one cannot be read."""
    import yaml

    from harness.checkpoint.quantisation import fp8_block_config, mxfp4_config, packed_int_config
    from harness.standins.zoo import _W4A16_IGNORE
    from harness.sweep.rehearsal import SEED_MODELS

    known = yaml.safe_load(SEED_MODELS.read_text())
    if hub_id not in known:
        raise KeyError(f"{hub_id} is not in {SEED_MODELS.name}; known: {', '.join(known)}")
    item = known[hub_id]
    text = {"model_type": item["family"], **item["config"], **item["sizes"]}
    quant = item.get("quantisation")
    qc = (fp8_block_config([], (128, 128)) if quant == "fp8" else
          packed_int_config(_W4A16_IGNORE, num_bits=4, group_size=32) if quant == "w4a16" else
          mxfp4_config(["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"])
          if quant == "mxfp4" else None)
    if qc is not None:
        text["quantization_config"] = qc
    if item["family"] == "llama4_text":  # stored as the multimodal wrapper, text under language_model.
        return {"model_type": "llama4", "text_config": text, "dtype": text["dtype"]}
    return text


# -- tasks ---------------------------------------------------------------------------------------------
def _count_rows(path: Path) -> int:
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if path.name.endswith((".json", ".json.gz")):
        with opener(path, "rt") as fh:
            data = json.load(fh)
        return len(data) if isinstance(data, list) else len(data.get("data", data))
    with opener(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def task_prompts(task, data_dir: Path | None, limit: int | None) -> int | None:
    """Prompts the task sends per variant: the rows of its data files (a toy task's file; the few-shot and
    template files aside), capped by `limit`; None when the data is remote (or absent) and no limit is set."""
    if hasattr(task, "prompt_count"):  # a task that selects its prompts itself (MMLU)
        return task.prompt_count(limit)
    if hasattr(task, "data_path"):
        files = [Path(task.data_path())]
    elif data_dir is not None:
        files = [p for p in task.data_files(data_dir) if p.name.endswith(_DATA_SUFFIXES)]
    else:
        files = []
    rows = sum(_count_rows(p) for p in files) if files and all(p.is_file() for p in files) else None
    if limit is not None:
        return min(limit, rows) if rows is not None else limit
    return rows


_DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")


@dataclass
class TaskCost:
    name: str
    prompts: int | None  # per variant
    max_tokens: int  # generated tokens per prompt at most (0: scored by log-likelihood, nothing generated)
    judge_tokens: int  # judge reply tokens per prompt at most (judged tasks)
    variants: int  # variants still to evaluate on it

    @property
    def tokens_per_variant(self) -> int | None:
        return None if self.prompts is None else self.prompts * self.max_tokens

    @property
    def tokens_to_do(self) -> int | None:
        per = self.tokens_per_variant
        return None if per is None else per * self.variants


def task_cost(cfg, spec, model, variants: int) -> TaskCost:
    from harness.tasks import get_task_class

    cls = get_task_class(spec.name)
    task = cls(spec.options)
    generation = cfg.task_generation(spec, model)
    generated = 0 if cls.category == "mc" else generation.max_tokens
    judge = int(getattr(task.options, "judge_max_tokens", 0) or 0) if cls.needs_judge else 0
    return TaskCost(spec.name, task_prompts(task, cfg.data_path, spec.limit), generated, judge, variants)


# -- the sweep -----------------------------------------------------------------------------------------
@dataclass
class VariantCost:
    label: str  # method / ratio
    checkpoint: CheckpointCost | None  # None: the baseline (the source itself)
    state: str  # "to write", "written", "evicted", or why it cannot be estimated
    from_plan: bool = False  # sized from the stored plan (else from a nominal plan of the same ratio)


@dataclass
class ModelCost:
    name: str
    shape: ModelShape
    tensor_parallel: int
    calibration: dict[str, CalibrationMemory]  # "normal" / "sequential", on GPUs
    calibration_cpu: dict[str, CalibrationMemory]  # the same on the CPU only
    calibration_dtype: str
    variants: list[VariantCost]
    sequential: bool  # what the sweep asks for

    @property
    def source_bytes(self) -> int:
        return self.shape.bytes

    def serving_per_gpu(self) -> dict[str, int]:
        """Weights per serving GPU: the baseline, and the largest compressed variant."""
        found = {"baseline": serving_memory_per_gpu(self.served_source_bytes, self.tensor_parallel)}
        sizes = [v.checkpoint.weights for v in self.variants if v.checkpoint is not None]
        if sizes:
            found["largest variant"] = serving_memory_per_gpu(max(sizes), self.tensor_parallel)
        return found

    @property
    def served_source_bytes(self) -> int:
        """The source's weights vLLM loads (stored MTP layers are skipped)."""
        layers = self.shape.text_config["num_hidden_layers"]
        return sum(t.nbytes for k, t in self.shape.inventory.items() if (self.shape.layer_of(k) or 0) < layers)


@dataclass
class SweepEstimate:
    models: list[ModelCost]
    tasks: list[TaskCost]
    time_left_s: float | None = None
    time_basis: str = ""

    @property
    def disk_to_write(self) -> int:
        return sum(v.checkpoint.total for m in self.models for v in m.variants
                   if v.checkpoint is not None and v.state in ("to write", "evicted"))

    @property
    def disk_all(self) -> int:
        return sum(v.checkpoint.total for m in self.models for v in m.variants if v.checkpoint is not None)


def moe_layers_of(shape: ModelShape) -> list[int]:
    """The decoder layers with routed experts: from the family's layout where inventory knows it, else (a family
    added from a package) the layers whose stored tensors include experts, which the headers show exactly."""
    try:
        return moe_layer_indices(shape.text_config)
    except ValueError:
        if not shape.exact:
            raise
        n = shape.text_config["num_hidden_layers"]
        return sorted({i for k in shape.inventory
                       if ".experts." in k and (i := shape.layer_of(k)) is not None and i < n})


def model_cost(cfg, model, shape: ModelShape, variants: list[tuple[str, str, float, Any, str]]) -> ModelCost:
    """`variants`: (label, kind, ratio, stored plan or None, state) of each compressed variant."""
    from harness.calibration.run import resolve_dtype

    dtype = resolve_dtype(model.calibration_dtype, shape.config)
    layers = moe_layers_of(shape)
    costs = []
    for label, kind, ratio, plan, state in variants:
        try:
            sized = plan if plan is not None else nominal_plan(shape.config, layers, ratio, kind)
            costs.append(VariantCost(label, checkpoint_cost(shape, sized, cfg.materialisation), state,
                                     plan is not None))
        except Exception as exc:  # noqa: BLE001 — an estimate names what it cannot size, it does not stop
            costs.append(VariantCost(label, None, f"not sized: {str(exc).splitlines()[0][:120]}"))
    spec = cfg.calibration
    extras: set[str] = set()
    if cfg.methods:
        from harness.methods import get_method

        for m in cfg.methods:
            extras |= set(get_method(m.name, m.config).needs)
    samples, length = spec.samples, spec.length
    memory = {(mode, gpu): calibration_memory(shape, samples=samples, length=length,
                                              batch_size=cfg.calibration_batch_size, dtype=dtype,
                                              sequential=mode == "sequential", on_gpu=gpu, extras=frozenset(extras))
              for mode in ("normal", "sequential") for gpu in (True, False)}
    return ModelCost(model.name, shape, model.serving.tensor_parallel_size,
                     {mode: m for (mode, gpu), m in memory.items() if gpu},
                     {mode: m for (mode, gpu), m in memory.items() if not gpu}, dtype, costs,
                     cfg.sequential_calibration)


def time_left(store, jobs) -> tuple[float | None, str]:
    """Seconds the remaining `jobs` (harness.sweep.grid.Job) should take, from the durations the store's journal
    recorded for finished jobs of the same stage; None when no stage of theirs has finished before."""
    started: dict[tuple[str, int], float] = {}
    durations: dict[str, list[float]] = {}
    for event in store.events():
        kind = event.get("event")
        ident = (event.get("job"), event.get("pid"))
        if kind == "job_started":
            started[ident] = event["time"]
        elif kind == "job_finished" and event.get("status") == "done" and ident in started:
            durations.setdefault(event["stage"], []).append(event["time"] - started.pop(ident))
    if not durations:
        return None, "no finished job recorded yet"
    total, unknown = 0.0, set()
    for job in jobs:
        seen = durations.get(job.stage)
        if seen:
            total += sum(seen) / len(seen)
        else:
            unknown.add(job.stage)
    basis = ", ".join(f"{stage} {sum(v) / len(v):.0f} s x {len(v)}" for stage, v in sorted(durations.items()))
    if unknown:
        basis += f"; no recorded {', '.join(sorted(unknown))} job: not counted"
    return total, f"mean of finished jobs: {basis}"


def format_estimate(est: SweepEstimate) -> list[str]:
    """The cost section of `--dry-run`."""
    lines = ["", "cost (checkpoint bytes exact; memory and time estimated; tokens are upper bounds):"]
    for m in est.models:
        source = "shard headers" if m.shape.exact else "config.json"
        lines.append(f"  {m.name}: source {human(m.source_bytes)} ({m.source_bytes} bytes, from its {source})")
        for mode, mem in m.calibration.items():
            chosen = " (this sweep)" if (mode == "sequential") == m.sequential else ""
            on_gpus = (human(mem.gpu_total) if mode == "sequential" else
                       f"{human(mem.gpu_total)} in all ({human(mem.gpu_total / m.tensor_parallel)} per GPU on "
                       f"{m.tensor_parallel})")
            lines.append(f"    calibration peak, {mode}{chosen}, {m.calibration_dtype}: on GPUs {on_gpus}, host "
                         f"{human(mem.host)}; on the CPU: host {human(m.calibration_cpu[mode].host)}")
        serving = ", ".join(f"{k} {human(v)}" for k, v in m.serving_per_gpu().items())
        lines.append(f"    serving at tensor_parallel_size {m.tensor_parallel}: weights per GPU: {serving}")
        for v in m.variants:
            if v.checkpoint is None:
                lines.append(f"    checkpoint {v.label:<24} {v.state}")
                continue
            c = v.checkpoint
            basis = "plan" if v.from_plan else "ratio"
            lines.append(f"    checkpoint {v.label:<24} {human(c.total):>10} ({c.total} bytes; routed experts "
                         f"{human(c.routed)}, the rest {human(c.other)}; from the {basis}) {v.state}")
    lines.append(f"  disk: checkpoints still to write {human(est.disk_to_write)} ({est.disk_to_write} bytes); "
                 f"all checkpoints {human(est.disk_all)}")
    for t in est.tasks:
        prompts = "? (remote data, no limit)" if t.prompts is None else str(t.prompts)
        if t.max_tokens == 0:
            tokens = "log-likelihood scoring, nothing generated"
        elif t.tokens_per_variant is None:
            tokens = f"at most {t.max_tokens} generated tokens per prompt"
        else:
            tokens = (f"at most {t.tokens_per_variant:,} generated tokens per variant, "
                      f"{t.tokens_to_do:,} for the {t.variants} variant(s) to do")
        judge = f"; judge replies at most {t.judge_tokens} tokens each" if t.judge_tokens else ""
        lines.append(f"  task {t.name}: {prompts} prompt(s) per variant; {tokens}{judge}")
    if est.time_left_s is not None:
        lines.append(f"  time left: about {est.time_left_s / 3600:.2f} h ({est.time_left_s:.0f} s; {est.time_basis})")
    else:
        lines.append(f"  time left: unknown ({est.time_basis})")
    return lines


# -- from a validated sweep ------------------------------------------------------------------------------
def source_shape(source) -> ModelShape:
    """A sweep model's shape: from its shard headers when its weights are here, else from its config.json."""
    from harness.archs import read_config
    from harness.checkpoint.hub import missing_weight_files

    folder = source.metadata_dir
    if not missing_weight_files(folder):
        return ModelShape.from_dir(folder)
    return ModelShape.from_config(read_config(folder), _side_files(folder))


def estimate_from_grid(cfg, grid, store, jobs=(), tasks: bool = True) -> SweepEstimate:
    """The cost of a validated sweep's grid; stored plans size their checkpoints exactly, and the store's
    journal gives the time left for `jobs` (the job graph still to run)."""
    from harness.methods import get_method
    from harness.plan import Plan

    models = []
    for mj in grid.models:
        shape = source_shape(mj.source)
        variants = []
        for v in mj.variants:
            if v.method is None:
                continue
            kind = get_method(v.method.name, v.method.config).kind
            plan = (Plan.load(store.dir("plan", v.plan_key) / "plan.json") if store.is_done("plan", v.plan_key)
                    else None)
            state = checkpoint_state(store, v.checkpoint_key)
            variants.append((f"{v.method_name} {v.ratio:g}", kind, v.ratio, plan, state))
        models.append(model_cost(cfg, mj.model, shape, variants))
    task_costs = []
    for spec in grid.tasks if tasks else []:  # counting prompts reads the tasks' data: the dry run only
        todo = sum(not store.is_done("eval", v.eval_keys[spec.name]) for mj in grid.models for v in mj.variants)
        task_costs.append(task_cost(cfg, spec, grid.models[0].model, todo))
    seconds, basis = time_left(store, jobs)
    return SweepEstimate(models, task_costs, seconds, basis)


def checkpoint_state(store, key: str) -> str:
    if store.is_done("checkpoint", key):
        return "evicted" if store.is_evicted("checkpoint", key) else "written"
    return "to write"
