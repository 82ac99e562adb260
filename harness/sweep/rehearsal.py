"""`python -m harness.sweep FILE --rehearse`: the sweep exactly as written, on tiny stand-ins, on this machine.

The step before launching on a cluster. Every method with its options, every ratio, the
tasks, generation settings, judge protocol and calibration protocol (packing, composition,
sequential or not) run as written; what cannot run here is replaced, and the report says so:

* each model by a stand-in built like the zoo: the same family and routing structure
  (groups, correction bias, scaling, shared experts, dense and MTP layers), the same
  quantisation format, and an expert count on which each ratio of the sweep is feasible
  exactly when it is on the real model. Its structure comes from the real config.json when
  the Hugging Face cache or the hub has it, else from harness/seed_models.yaml, else from the
  family's defaults and the declared `experts:`. Stand-ins are put into a Hugging Face cache of
  the rehearsal's own under `rehearsal/<name>` ids, so the hub code path is the one users take.
  They end their replies within a few tokens (an end-of-turn bias), so the real generation
  settings run in minutes;
* hub calibration datasets by local records of the same shape (the same fields), and the
  calibration set is shrunk to a few rows (packing mode and composition kept);
* each task is capped at a few samples; tasks without local data are listed as not
  rehearsed, with the reason; a remote judge becomes a local stand-in judge;
* GPU-only serving options (tensor parallelism) become their single-CPU equivalents.

Work, results and figures go under the rehearsal folder (default `rehearsals/<sweep>/`),
never into the real work or results directories.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.checkpoint.hub import HubAccess, ModelUnavailableError, add_to_cache, resolve
from harness.serving.vllm import serves_quantised_weights

log = logging.getLogger("harness.sweep.rehearsal")

SEED_MODELS = Path(__file__).resolve().parents[1] / "seed_models.yaml"  # harness/seed_models.yaml
HUB_ORG = "rehearsal"
# Stand-ins: at most this many experts unless the ratios need more to stay (in)feasible as on the real model.
MIN_STAND_IN_EXPERTS = 16
TASK_SAMPLES = 2
CALIBRATION_ROWS = 32
CALIBRATION_LENGTH = 256
# Added to the end-of-turn token's logit through the constant embedding channel of zoo models: replies end
# after a few tokens instead of running to max_tokens.
END_OF_TURN_BIAS = 0.6
# The calibration record fields of hub datasets whose fields the sweep does not name.
DEFAULT_FIELDS = {"prompt_field": "prompt", "response_field": "response"}


@dataclass
class StandIn:
    """What replaced one model of the sweep, and where its structure came from."""

    model: str
    real: str
    hub_id: str
    family: str
    structure_from: str
    real_experts: int
    experts: dict[str, Any]
    quantisation: str | None
    layers: int
    mtp_layers: int
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class RehearsalReport:
    sweep: str
    root: str
    stand_ins: list[StandIn] = field(default_factory=list)
    substitutions: list[str] = field(default_factory=list)
    tasks_rehearsed: list[str] = field(default_factory=list)
    tasks_not_rehearsed: dict[str, str] = field(default_factory=dict)
    # The last stage rehearsed when a stand-in cannot be served here (its adapter's `cpu_serving_limit`).
    until: str | None = None

    def lines(self) -> list[str]:
        out = [f"rehearsal of {self.sweep} under {self.root}"]
        for s in self.stand_ins:
            quant = f", {s.quantisation}" if s.quantisation else ""
            mtp = f", {s.mtp_layers} MTP layer(s)" if s.mtp_layers else ""
            out.append(f"  {s.model}: {s.real} -> {s.hub_id} ({s.family}, {s.experts['num_experts']} of "
                       f"{s.real_experts} experts, top-{s.experts['top_k']}{quant}{mtp}; structure from "
                       f"{s.structure_from})")
        out += [f"  substituted: {line}" for line in self.substitutions]
        out.append(f"  tasks rehearsed: {', '.join(self.tasks_rehearsed) or 'none'}")
        for task, why in self.tasks_not_rehearsed.items():
            out.append(f"  NOT rehearsed: {task}: {why}")
        return out


# -- stand-in models ------------------------------------------------------------------------------------
def _real_structure(entry: dict[str, Any], base: Path) -> tuple[str, dict[str, Any], str | None, str]:
    """(family, config keys, quantisation, where they came from) of the real model."""
    from harness.archs import get_arch, read_config
    from harness.checkpoint.quantisation import detect_format
    from harness.standins.zoo import QUANTS

    path = entry["path"]
    try:
        source = resolve(path, entry.get("revision"), base, HubAccess())
    except ModelUnavailableError:
        source = None
    if source is not None:
        config = read_config(source.metadata_dir)
        arch = get_arch(config)
        keys = {k: arch.config[k] for k in (arch.expert_count_key, arch.top_k_key, *arch.structure_keys)
                if k in arch.config}
        fmt = detect_format(config).name
        quant = next((name for name, q in QUANTS.items() if q.format == fmt), None)
        if fmt != "none" and quant is None:
            raise ValueError(f"model {entry.get('name')}: no zoo stand-in stores weights as {fmt!r}")
        return arch.model_type, keys, quant, f"config.json of {source.describe()}"
    known = yaml.safe_load(SEED_MODELS.read_text())
    if path in known:
        item = known[path]
        return item["family"], dict(item["config"]), item.get("quantisation"), f"{SEED_MODELS.name} ({path})"
    family, experts = entry.get("family"), entry.get("experts")
    if family is None or experts is None:
        raise ValueError(f"model {entry.get('name')}: {path} cannot be read here and is not in {SEED_MODELS.name}; "
                         "declare `family:` and `experts:` so that a stand-in can be built")
    from harness.archs import arch_class

    cls = arch_class(family)
    keys = {cls.expert_count_key: experts["num_experts"], cls.top_k_key: experts["top_k"]}
    if experts.get("n_group", 1) > 1:
        keys.update(n_group=experts["n_group"], topk_group=experts.get("topk_group") or experts["n_group"])
    return family, keys, None, "the family's defaults and the declared experts:"


def _constraints(family: str, keys: dict[str, Any]):
    from harness.archs import arch_class
    from harness.methods.constraints import ExpertConstraints

    arch = arch_class(family)({"model_type": family, **keys})
    return ExpertConstraints.for_family(family, num_experts=arch.num_experts, top_k=arch.top_k, n_group=arch.n_group,
                                        topk_group=arch.topk_group)


def _feasible(constraints, ratio: float) -> bool:
    from harness.methods.constraints import InfeasibleRatioError

    try:
        constraints.target_count(ratio)
    except InfeasibleRatioError:
        return False
    return True


def stand_in_expert_count(constraints, family: str, ratios: list[float]) -> int:
    """The smallest expert count (from MIN_STAND_IN_EXPERTS up) on which every ratio is feasible exactly when
    it is on the real model; the real count when it is that small already."""
    from harness.methods.constraints import ExpertConstraints

    real = constraints.num_experts
    if real <= MIN_STAND_IN_EXPERTS:
        return real
    wanted = [_feasible(constraints, r) for r in ratios]
    for count in range(MIN_STAND_IN_EXPERTS, real + 1):
        if count % constraints.n_group:
            continue
        candidate = ExpertConstraints.for_family(family, num_experts=count, top_k=constraints.top_k,
                                                 n_group=constraints.n_group, topk_group=constraints.topk_group)
        if [_feasible(candidate, r) for r in ratios] == wanted:
            return count
    return real


def _layer_counts(arch, keys: dict[str, Any]) -> tuple[int, int]:
    """(decoder layers, MTP layers): the dense layers the real model starts with, then two MoE layers."""
    return max(3, arch.leading_dense_layers(keys) + 2), arch.mtp_layers(keys)


def build_stand_in(entry: dict[str, Any], ratios: list[float], folder: Path, base: Path,
                   max_model_len: int | None) -> tuple[StandIn, Path]:
    """Build (or reuse) the stand-in of one sweep model; returns its description and checkpoint folder."""
    from harness.archs import arch_class
    from harness.standins.zoo import add_mtp_layers, build_model, zoo_template

    family, keys, quantisation, where = _real_structure(entry, base)
    arch = arch_class(family)
    constraints = _constraints(family, keys)
    count = stand_in_expert_count(constraints, family, ratios)
    layers, mtp = _layer_counts(arch, keys)
    overrides = {**keys, arch.expert_count_key: count, "num_hidden_layers": layers,
                 "max_position_embeddings": max(2048, max_model_len or 0)}
    if arch.mtp_layers_key:
        overrides.pop(arch.mtp_layers_key, None)  # add_mtp_layers writes them and sets the key
    if "n_group" in keys:  # the zoo's group settings are its own; the real model's replace them
        overrides["topk_group"] = keys.get("topk_group") or keys["n_group"]
    slug = _slug(entry["path"])
    stand_in = StandIn(model=entry["name"], real=entry["path"], hub_id=f"{HUB_ORG}/{slug}", family=family,
                       structure_from=where, real_experts=constraints.num_experts,
                       experts={"num_experts": count, "top_k": constraints.top_k, "n_group": constraints.n_group,
                                **({"topk_group": constraints.topk_group} if constraints.topk_group else {})},
                       quantisation=quantisation, layers=layers, mtp_layers=mtp, config=overrides)
    out = folder / slug
    recipe = json.dumps(asdict(stand_in), sort_keys=True)
    if not (out / "stand_in.json").is_file() or (out / "stand_in.json").read_text() != recipe:
        shutil.rmtree(out, ignore_errors=True)
        tmp = folder / f".{slug}.building"
        shutil.rmtree(tmp, ignore_errors=True)
        build_model(zoo_template(family), tmp, overrides=overrides, quant=quantisation)
        if mtp:
            add_mtp_layers(tmp, mtp)
        _end_replies_early(tmp)
        (tmp / "stand_in.json").write_text(recipe)
        tmp.rename(out)
    return stand_in, out


def _end_replies_early(model_dir: Path) -> None:
    """Raise the end-of-turn token's logit (zoo models carry a constant embedding channel 0)."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    token = AutoTokenizer.from_pretrained(model_dir).convert_tokens_to_ids("<|im_end|>")
    path = model_dir / "model.safetensors"
    tensors = load_file(str(path))
    head = tensors["lm_head.weight"]
    head[token, 0] += END_OF_TURN_BIAS
    save_file(tensors, str(path), metadata={"format": "pt"})


def _slug(path: str) -> str:
    """A hub-valid name for a model or dataset id ("zai-org/GLM-4.5-Air" -> "zai-org_GLM-4.5-Air")."""
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.strip("/.~").replace("/", "_"))
    while "--" in slug or ".." in slug:
        slug = slug.replace("--", "-").replace("..", ".")
    return slug[:96]


# -- the rehearsed sweep ---------------------------------------------------------------------------------
def _calibration_records(fmt: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """`count` local records with the fields the sweep reads from its hub dataset."""
    from harness.standins.toy.corpus import training_stream

    records = []
    for example in training_stream(sample_seed=7):
        if example.prompt is None:
            continue
        if fmt.get("format") == "messages":
            records.append({"messages": example.messages()})
        elif fmt.get("text_field") or fmt.get("format") == "text":
            records.append({fmt.get("text_field") or "text": f"{example.prompt}\n{example.response}"})
        else:
            records.append({fmt["prompt_field"]: example.prompt, fmt["response_field"]: example.response})
        if len(records) == count:
            return records
    raise AssertionError("the training stream is endless")


def _rehearsed_calibration(raw: dict[str, Any], root: Path, report: RehearsalReport) -> dict[str, Any]:
    from harness.calibration.data import DEFAULT_DATASETS, DatasetSpec

    calibration = copy.deepcopy(raw["calibration"])
    n, length = calibration["samples"], calibration["length"]
    rows, new_length = min(n, CALIBRATION_ROWS), min(length, CALIBRATION_LENGTH)
    datasets = calibration["datasets"]
    shares = [d.get("samples") for d in datasets]
    if len(datasets) > 1:  # the same composition, in fewer rows (each dataset keeps at least one)
        scaled = [max(1, round(s * rows / n)) for s in shares]
        scaled[scaled.index(max(scaled))] += rows - sum(scaled)
        for d, s in zip(datasets, scaled, strict=True):
            d["samples"] = s
    elif shares[0] is not None:
        datasets[0]["samples"] = rows
    for i, d in enumerate(datasets):
        if DatasetSpec(**d).is_local:
            continue
        fields = {k: d[k] for k in ("format", "prompt_field", "response_field", "text_field") if d.get(k)}
        if not fields:
            known = next((v for v in DEFAULT_DATASETS.values() if v["source"] == d["source"]), {})
            fields = {k: known[k] for k in ("format", "prompt_field", "response_field", "text_field") if k in known}
        fields = fields or dict(DEFAULT_FIELDS)
        hub_name = d["source"]
        path = root / "calibration" / f"{i}-{_slug(hub_name)}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        # Enough records for any packing: one per row, several rows' worth of tokens.
        records = _calibration_records(fields, count=max(4 * rows, 64))
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        for key in ("subset", "split", "revision"):
            d.pop(key, None)
        d.update(fields, source=str(path))
        shown = ", ".join(f"{k}={v}" for k, v in sorted(fields.items()))
        report.substitutions.append(f"calibration dataset {i}: hub dataset {hub_name} -> local records of the same "
                                    f"shape ({shown}) in {path.name}")
    calibration["samples"], calibration["length"] = rows, new_length
    report.substitutions.append(f"calibration: {n} x {length} tokens -> {rows} x {new_length} "
                                f"(packing {calibration.get('packing', 'concat')!r} and composition kept)")
    return calibration


def _rehearsed_tasks(raw: dict[str, Any], data_dir: Path | None, tokenizer: Path, samples: int,
                     report: RehearsalReport) -> list[dict[str, Any]]:
    from harness.archs import arch_class
    from harness.sweep.config import SweepConfig, expand_task_names
    from harness.tasks import get_task_class
    from harness.tasks.base import Endpoint, TaskContext

    cfg = SweepConfig(**raw)
    # A family whose chat requests a tiny stand-in cannot answer says why (its adapter's `rehearsal_chat_limit`).
    chat_limits = [f"{s.model}: {limit}" for s in report.stand_ins
                   if (limit := getattr(arch_class(s.family), "rehearsal_chat_limit", None))]
    placeholder = Endpoint(base_url="http://rehearsal.invalid/v1", model="rehearsal", tokenizer=str(tokenizer))
    tasks = []
    for spec in expand_task_names(cfg.tasks):
        task = get_task_class(spec.name)(spec.options)
        judge = placeholder if task.needs_judge else None
        ctx = TaskContext(endpoint=placeholder, data_dir=data_dir, judge=judge)
        problems = task.check_ready(ctx) + [r for r in [task.not_run_reason(ctx)] if r]
        if task.category != "mc":  # every task but the log-likelihood ones is chat
            problems += chat_limits
        if data_dir is None:
            problems.append("no local benchmark data (give --data-dir)")
        elif not problems:  # offline, a task that would fall back to its hub copy cannot run either
            missing = [p for p in task.data_files(data_dir) if not p.exists()]
            if missing:
                problems.append(f"no local copy ({len(missing)} data file(s) missing, e.g. {missing[0]})")
        if problems:
            report.tasks_not_rehearsed[spec.name] = "; ".join(problems)
            continue
        limit = min(spec.limit or samples, samples)
        tasks.append({**spec.model_dump(exclude_defaults=True), "limit": limit})
        report.tasks_rehearsed.append(spec.name)
    return tasks


def rehearsal_sweep(raw: dict[str, Any], root: Path, *, data_dir: Path | None, samples: int = TASK_SAMPLES,
                    base: Path | None = None) -> tuple[dict[str, Any], RehearsalReport]:
    """The rehearsed sweep file (a mapping) and the report of what was substituted."""
    from harness.sweep.config import SweepConfig

    base = base or Path.cwd()
    SweepConfig(**raw)  # the schema first: a broken file is reported as such, not as a rehearsal problem
    raw = copy.deepcopy(raw)
    report = RehearsalReport(sweep=raw["name"], root=str(root))
    cache = root / "hub"
    models = []
    for entry in raw["models"]:
        serving = dict(entry.get("serving") or {})
        stand_in, folder = build_stand_in(entry, list(raw.get("ratios") or []), root / "stand_ins", base,
                                          serving.get("max_model_len"))
        add_to_cache(cache, stand_in.hub_id, folder)
        report.stand_ins.append(stand_in)
        if serving.get("tensor_parallel_size", 1) != 1:
            report.substitutions.append(f"{entry['name']}: tensor_parallel_size {serving['tensor_parallel_size']} "
                                        "-> 1 (one CPU server)")
            serving["tensor_parallel_size"] = 1
        if stand_in.quantisation and not serves_quantised_weights(stand_in.quantisation):
            report.substitutions.append(f"{entry['name']}: served as a dequantised copy (this machine's vLLM has no "
                                        f"{stand_in.quantisation} kernels for the stand-in); calibration and "
                                        "checkpoints stay quantised")
            serving["dequantise"] = True
        new = {**entry, "path": stand_in.hub_id, "experts": stand_in.experts, "serving": serving}
        new.pop("revision", None)
        new["family"] = stand_in.family
        models.append(new)
    raw["models"] = models
    if raw.get("methods"):
        raw["calibration"] = _rehearsed_calibration(raw, root, report)
    judge = raw.get("judge")
    if judge and not judge.get("serve"):
        report.substitutions.append(f"judge: {judge.get('model')} at {judge.get('base_url')} -> the local stand-in "
                                    "judge (well-formed verdicts, scores carry no signal)")
        raw["judge"] = {"serve": "stand_in"}
    first = root / "stand_ins" / _slug(report.stand_ins[0].real)
    raw["tasks"] = _rehearsed_tasks(raw, data_dir, first, samples, report)
    if not raw["tasks"]:
        raise ValueError(f"no task of {raw['name']} has local data here (data_dir {data_dir}): nothing to rehearse")
    _stop_before_serving_what_cannot_be_served(report)
    raw["data_dir"] = str(data_dir) if data_dir else None
    raw["work_dir"] = str(root / "work")
    raw["results_dir"] = str(root / "results")
    return raw, report


def _stop_before_serving_what_cannot_be_served(report: RehearsalReport) -> None:
    """A family the local vLLM cannot serve (its adapter's `cpu_serving_limit`, on a machine without CUDA) is
    rehearsed up to its checkpoints; its tasks are listed as not rehearsed with that reason."""
    from harness.archs import arch_class
    from harness.serving.vllm import cuda_available

    limits = [f"{s.model}: {limit}" for s in report.stand_ins
              if (limit := getattr(arch_class(s.family), "cpu_serving_limit", None))]
    if not limits or cuda_available():
        return
    report.until = "checkpoint"
    report.substitutions.append("; ".join(limits) + ": rehearsed up to the checkpoints (--until checkpoint)")
    for task in report.tasks_rehearsed:
        report.tasks_not_rehearsed[task] = "not served here: " + "; ".join(limits)
    report.tasks_rehearsed = []


def default_data_dir(raw: dict[str, Any], base: Path) -> Path | None:
    """The sweep's data_dir when it exists here, else the offline copies beside the repository."""
    given = raw.get("data_dir")
    if given and (base / given).expanduser().is_dir():
        return (base / given).expanduser().resolve()
    shared = Path(__file__).resolve().parents[3] / "shared" / "datasets"
    return shared if shared.is_dir() else None


def prepare(sweep_file: str | Path, *, root: str | Path | None = None, data_dir: str | Path | None = None,
            samples: int = TASK_SAMPLES, base: Path | None = None):
    """Build the stand-ins and return (the validated rehearsal sweep, report)."""
    from harness.sweep.config import load_sweep, read_sweep_file

    base = (base or Path.cwd()).resolve()
    raw = read_sweep_file(sweep_file)
    root = Path(root) if root else base / "rehearsals" / raw["name"]
    root = root.resolve()
    data = Path(data_dir).resolve() if data_dir else default_data_dir(raw, base)
    rehearsed, report = rehearsal_sweep(raw, root, data_dir=data, samples=samples, base=base)
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.yaml").write_text(yaml.safe_dump(rehearsed, sort_keys=False))
    (root / "rehearsal.json").write_text(json.dumps(asdict(report), indent=1, sort_keys=True) + "\n")
    sweep = load_sweep(root / "sweep.yaml", base=base, hub=HubAccess(cache_dir=root / "hub", offline=True),
                       raw=rehearsed)
    return sweep, report
