"""The sweep file: its schema (`SweepConfig`, plain data), and every check that can run before any work starts.

`load_sweep(path)` parses the YAML and validates the whole grid in one pass; all
problems (unknown method, task or family, ratios outside (0, 1), infeasible expert
counts, missing data files, missing judge settings, ...) are collected and raised
together as one `SweepConfigError`, so a researcher fixes the file once. What validation
resolved comes back with the sweep as a `ValidatedSweep` (each model's source, the
statistics the methods need, the folders made absolute); nothing is left on the schema.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.calibration.data import CalibrationSpec
from harness.checkpoint.hub import HubAccess, ModelSource
from harness.tasks.base import Endpoint, GenerationSettings


class SweepConfigError(ValueError):
    """The sweep file has problems; the message lists all of them."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{listing}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServingOptions(Strict):
    """vLLM options for one model (see harness.serving.vllm.VLLMServer)."""

    dtype: str = "auto"
    tensor_parallel_size: int = Field(1, ge=1)
    max_model_len: int | None = Field(None, ge=16)
    extra_args: list[str] = Field(default_factory=list)  # e.g. ["--enable-expert-parallel"]
    env: dict[str, str] = Field(default_factory=dict)
    startup_timeout_s: float = Field(1800.0, gt=0)
    # Serve a dequantised copy of a quantised checkpoint, for a vLLM without its kernels (the CPU build with the
    # tiny stand-ins: harness.serving.vllm.serves_quantised_weights); the answers are then the dequantised model's.
    dequantise: bool = False

    def output_affecting(self) -> dict[str, Any]:
        """Settings that can change what the server answers (part of evaluation keys)."""
        found = {"dtype": self.dtype, "max_model_len": self.max_model_len, "extra_args": self.extra_args}
        if self.dequantise:
            found["dequantise"] = True
        return found


class ExpertLayout(Strict):
    """A model's routed-expert layout, declared so that hub models validate offline.

    Checked against config.json whenever the model is available locally.
    """

    num_experts: int = Field(ge=2)
    top_k: int = Field(ge=1)
    n_group: int = Field(1, ge=1)
    topk_group: int | None = None


class ModelSpec(Strict):
    name: str = Field(min_length=1, description="display name in results and figures")
    path: str = Field(min_length=1, description="Hugging Face id or local checkpoint directory")
    revision: str | None = None
    family: str | None = None  # transformers model_type; read from config.json when local
    experts: ExpertLayout | None = None
    serving: ServingOptions = Field(default_factory=ServingOptions)
    chat_template_kwargs: dict[str, Any] | None = None  # overrides the generation default
    # The dtype calibration computes in ("auto": the checkpoint's, bfloat16 for quantised weights).
    # Part of the calibration key: the statistics change with it.
    calibration_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.name)


class MethodSpec(Strict):
    name: str
    config: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None  # results name when one method runs with several configs

    @property
    def result_name(self) -> str:
        return self.label or self.name


class TaskSpec(Strict):
    name: str
    limit: int | None = Field(None, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)
    generation: dict[str, Any] = Field(default_factory=dict)  # overrides of the sweep's defaults


class JudgeSpec(Strict):
    """The creative-writing judge: any OpenAI-compatible endpoint, or one the sweep starts."""

    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    serve: str | None = Field(None, description="'rubric' starts the deterministic toy rubric judge; "
                                                "'stand_in' a judge that answers any prompt (rehearsals)")

    @model_validator(mode="after")
    def _one_kind(self) -> JudgeSpec:
        from harness.tasks.rubric_judge import LOCAL_JUDGES

        if self.serve is None and not (self.base_url and self.model):
            raise ValueError("judge needs base_url and model, or serve: rubric")
        if self.serve is not None and self.serve not in LOCAL_JUDGES:
            raise ValueError(f"judge.serve must be one of {', '.join(LOCAL_JUDGES)}, got {self.serve!r}")
        return self


class RayOptions(Strict):
    """For `executor: ray` (or --executor ray)."""

    address: str | None = None  # a running cluster (else RAY_ADDRESS, else a local one is started)
    max_retries: int = Field(3, ge=0)  # times a job lost with its worker is run again
    checkpoint_memory_gb: float = Field(8.0, ge=0)  # memory reserved for a checkpoint write


class SweepConfig(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    models: list[ModelSpec] = Field(min_length=1)
    calibration: CalibrationSpec
    calibration_batch_size: int = Field(8, ge=1)
    sequential_calibration: bool = False
    methods: list[MethodSpec] = Field(default_factory=list)
    ratios: list[float] = Field(default_factory=list)
    baseline: bool = True
    tasks: list[TaskSpec] = Field(min_length=1)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    judge: JudgeSpec | None = None
    data_dir: str | None = None
    work_dir: str | None = None
    results_dir: str | None = None
    plots: bool = True
    # results/<sweep>/report.html (harness.results.report) at the end of every run: figures, tables, samples
    report: bool = True
    materialisation: str = "shared_slots"
    # Retention: keep every checkpoint, or delete each once every evaluation of its variant is done (written
    # again, byte-identical, when a later run needs it: a new task, --force eval). The store records evictions.
    checkpoints: Literal["keep", "evict_after_eval"] = "keep"
    # Which tasks make up each category score (default: every task of that category that ran).
    category_tasks: dict[str, list[str]] | None = None
    executor: Literal["local", "ray"] = "local"
    ray: RayOptions = Field(default_factory=RayOptions)

    @field_validator("methods", mode="before")
    @classmethod
    def _method_shorthand(cls, value: Any) -> Any:
        return [{"name": v} if isinstance(v, str) else v for v in value or []]

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_shorthand(cls, value: Any) -> Any:
        return [{"name": v} if isinstance(v, str) else v for v in value or []]

    # Relative folders are relative to the folder the sweep was loaded from; load_sweep makes them absolute.
    @property
    def work_path(self) -> Path:
        return anchored(self.work_dir, f"work/{self.name}")

    @property
    def results_path(self) -> Path:
        return anchored(self.results_dir, f"results/{self.name}")

    @property
    def data_path(self) -> Path | None:
        return anchored(self.data_dir, "") if self.data_dir else None

    def task_generation(self, task: TaskSpec, model: ModelSpec) -> GenerationSettings:
        merged = {**self.generation.model_dump(), **task.generation}
        if model.chat_template_kwargs is not None:
            merged["chat_template_kwargs"] = model.chat_template_kwargs
        return GenerationSettings(**merged)

    def judge_endpoint(self) -> Endpoint | None:
        if self.judge is None or self.judge.serve:
            return None
        return Endpoint(base_url=self.judge.base_url, model=self.judge.model, api_key_env=self.judge.api_key_env)


def anchored(value: str | None, default: str, base: Path | None = None) -> Path:
    """A folder of the sweep file: `value` (else `default`), relative ones under `base` (default: the working
    directory)."""
    path = Path(value or default).expanduser()
    return path if path.is_absolute() else ((base or Path.cwd()) / path).resolve()


@dataclass(frozen=True)
class ValidatedSweep:
    """A sweep that passed validation, and what validation resolved on the way: the one input of the grid.

    `cfg` is the file's schema with its folders (work_dir, results_dir, data_dir) made absolute against `base`;
    `sources` maps each model's name to where its weights are (a local directory, or a hub id at a commit);
    `needs` are the calibration statistics the sweep's methods need beyond the routed ones.
    """

    cfg: SweepConfig
    base: Path
    hub: HubAccess
    sources: Mapping[str, ModelSource]
    needs: frozenset[str]

    def source(self, model: ModelSpec) -> ModelSource:
        """The model as validation resolved it."""
        return self.sources[model.name]


def expand_task_names(names: list[TaskSpec]) -> list[TaskSpec]:
    """Category names (coding, math, mc, creative_writing) become their paper task lists (harness.tasks.expand);
    a task's own options, limit and generation overrides go with each of its tasks. Unknown names are kept,
    for validation to report."""
    out: list[TaskSpec] = []
    for spec in names:
        out += [spec.model_copy(update={"name": t}) for t in _task_names(spec.name) if t not in {o.name for o in out}]
    return out


def _task_names(name: str) -> list[str]:
    """The tasks a sweep's task entry stands for (a category's tasks); an unknown name stands for itself."""
    from harness.tasks import UnknownTaskError, expand

    try:
        return expand([name])
    except UnknownTaskError:
        return [name]


def _pydantic_problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        problems.append(f"{where}: {err['msg']}")
    return problems


def _model_problems(cfg: SweepConfig, model: ModelSpec, index: int, base: Path, hub: HubAccess,
                    sources: dict[str, ModelSource]) -> list[str]:
    """Resolve the model (local directory, or hub id -> commit in the cache or on the hub) into `sources` and check
    its layout."""
    from harness.archs import get_arch, read_config, supported_families
    from harness.checkpoint.hub import ModelUnavailableError, looks_local, resolve
    from harness.methods.constraints import ExpertConstraints, InfeasibleRatioError

    where = f"models[{index}] ({model.name})"
    problems: list[str] = []
    layout = model.experts
    families = supported_families()
    if model.family is not None and model.family not in families:
        return [f"{where}: unknown family {model.family!r}; supported: {', '.join(families)}"]
    try:
        source = resolve(model.path, model.revision, base, hub)
    except ModelUnavailableError as exc:
        problems.append(f"{where}: {exc}")
        source = None
    if source is not None:
        sources[model.name] = source
        try:
            arch = get_arch(read_config(source.metadata_dir))
        except (FileNotFoundError, ValueError, json.JSONDecodeError) as exc:
            return [f"{where}: {exc}"]
        if model.family and model.family != arch.model_type:
            problems.append(f"{where}: family {model.family!r} but config.json says {arch.model_type!r}")
        constraints = ExpertConstraints.from_arch(arch)
        if layout and (layout.num_experts, layout.top_k, layout.n_group) != (
                constraints.num_experts, constraints.top_k, constraints.n_group):
            problems.append(f"{where}: experts: declares {layout.num_experts} experts, top_k {layout.top_k}, "
                            f"n_group {layout.n_group} but config.json has {constraints.num_experts}, "
                            f"{constraints.top_k}, {constraints.n_group}")
    elif looks_local(model.path):
        return problems
    else:  # unavailable hub model: still check what its declaration allows, so every problem is listed once
        if model.family is None or layout is None:
            return problems
        constraints = ExpertConstraints.for_family(model.family, num_experts=layout.num_experts, top_k=layout.top_k,
                                                   n_group=layout.n_group, topk_group=layout.topk_group)
    for ratio in cfg.ratios:
        if not 0 < ratio < 1:
            continue
        try:
            constraints.target_count(ratio)
        except InfeasibleRatioError as exc:
            problems.append(f"{where}: ratio {ratio}: {exc}")
    # The calibration data's check (it loads the tokenizer and tokenizes the data) runs in the preflight, and
    # only for a calibration still to do: harness.sweep.preflight.calibration_data_problems.
    return problems


def _calibration_data_problems(cfg: SweepConfig, source) -> list[str]:
    """Too few records or tokens in a local calibration file, found before calibration starts."""
    from harness.calibration.data import data_problems

    if not any(ds.is_local for ds in cfg.calibration.datasets):
        return []
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.metadata_dir)
    except Exception as exc:  # noqa: BLE001 — reported, not raised: validation lists every problem
        return [f"the tokenizer could not be loaded from {source.metadata_dir}: {exc}"]
    return data_problems(cfg.calibration, tokenizer)


def _problems(cfg: SweepConfig, base: Path, hub: HubAccess, sources: dict[str, ModelSource],
              needs: set[str]) -> list[str]:
    """Every problem of a parsed sweep (its folders already absolute), without loading any model or dataset;
    fills `sources` with each model it resolved and `needs` with the statistics the methods need."""
    from harness.methods import UnknownMethodError, get_method, method_names
    from harness.tasks import UnknownTaskError, get_task_class

    problems: list[str] = []
    for ratio in cfg.ratios:
        if not 0 < ratio < 1:
            problems.append(f"ratios: {ratio} is outside (0, 1)")
    for dup in sorted({r for r in cfg.ratios if cfg.ratios.count(r) > 1}):
        problems.append(f"ratios: {dup:g} appears {cfg.ratios.count(dup)} times; list each ratio once")
    problems += _task_duplicates(cfg.tasks)
    problems += _directory_problems(cfg)
    problems += _judge_key_problems(cfg)
    if cfg.methods and not cfg.ratios:
        problems.append("ratios: methods are given but no ratios")
    if not cfg.methods and not cfg.baseline:
        problems.append("nothing to run: no methods and baseline: false")
    names = [m.result_name for m in cfg.methods]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"methods: {dup!r} appears twice; give one a `label:`")
    for i, method in enumerate(cfg.methods):
        try:
            needs.update(get_method(method.name, method.config).needs)
        except UnknownMethodError:
            problems.append(f"methods[{i}]: unknown method {method.name!r}; known: {', '.join(method_names())}")
        except ValidationError as exc:
            problems += [f"methods[{i}] ({method.name}).config.{p}" for p in _pydantic_problems(exc)]
    names = [m.name for m in cfg.models]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"models: name {dup!r} appears twice")
    for i, model in enumerate(cfg.models):
        problems += _model_problems(cfg, model, i, base, hub, sources)

    data_dir = cfg.data_path
    if data_dir is not None and not data_dir.is_dir():
        problems.append(f"data_dir: {data_dir} is not a directory")
        data_dir = None
    for spec in expand_task_names(cfg.tasks):
        try:
            task_cls = get_task_class(spec.name)
        except UnknownTaskError as exc:
            problems.append(f"tasks ({spec.name}): {exc}")
            continue
        except ImportError as exc:
            problems.append(f"tasks ({spec.name}): its module could not be imported: {exc}")
            continue
        try:
            task = task_cls(spec.options)
        except ValidationError as exc:
            problems += [f"tasks ({spec.name}).options.{p}" for p in _pydantic_problems(exc)]
            continue
        try:
            GenerationSettings(**{**cfg.generation.model_dump(), **spec.generation})
        except ValidationError as exc:
            problems += [f"tasks ({spec.name}).generation.{p}" for p in _pydantic_problems(exc)]
        if task.needs_judge and cfg.judge is None:
            problems.append(f"tasks ({spec.name}): a judged task needs a `judge:` section "
                            "(base_url + model [+ api_key_env], or serve: rubric)")
        # The sweep gives every task the served model's tokenizer and the judge (checked above): what is left
        # to check before any server exists is the task's data.
        problems += task.check_data(data_dir)
    return problems


def _task_duplicates(tasks: list[TaskSpec]) -> list[str]:
    """A task named twice, directly or through a category (`math` and `gsm8k`): which entry's limit and options
    would apply is a guess, so the file must say it once."""
    given_by: dict[str, list[str]] = {}
    for spec in tasks:
        for name in _task_names(spec.name):
            given_by.setdefault(name, []).append(spec.name)
    problems = []
    for name, entries in given_by.items():
        if len(entries) > 1:
            how = "" if set(entries) == {name} else f" (by {', '.join(repr(e) for e in entries)})"
            problems.append(f"tasks: {name!r} is listed {len(entries)} times{how}; list each task once")
    return problems


def _directory_problems(cfg: SweepConfig) -> list[str]:
    """The work and results directories must exist or be creatable: found here, not as a traceback after
    calibration. Nothing is created; the nearest existing folder above each must be a writable directory."""
    import os

    problems = []
    for field_name, path in (("work_dir", cfg.work_path), ("results_dir", cfg.results_path)):
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if existing == path and path.is_dir():
            if not os.access(path, os.W_OK | os.X_OK):
                problems.append(f"{field_name}: {path} is not writable; give `{field_name}:` a folder you can "
                                "write, or change its permissions")
            continue
        if not existing.is_dir():
            problems.append(f"{field_name}: cannot create {path}: {existing} exists and is not a directory; "
                            f"set `{field_name}:` to another path")
        elif not os.access(existing, os.W_OK | os.X_OK):
            problems.append(f"{field_name}: cannot create {path}: {existing} is not writable (permission denied or "
                            f"a read-only filesystem); set `{field_name}:` to a folder you can write")
    return problems


def _judge_key_problems(cfg: SweepConfig) -> list[str]:
    """A judged task whose judge reads its key from an unset variable would fail only after calibration,
    compression and serving; say so now."""
    import os

    judge = cfg.judge
    if judge is None or judge.serve or not judge.api_key_env or os.environ.get(judge.api_key_env):
        return []
    judged = [spec.name for spec in expand_task_names(cfg.tasks) if _needs_judge(spec.name)]
    if not judged:
        return []
    return [f"judge.api_key_env: environment variable {judge.api_key_env} is not set, but {', '.join(judged)} "
            f"need(s) the judge at {judge.base_url}; export {judge.api_key_env}=<key> before running"]


def _needs_judge(task: str) -> bool:
    from harness.tasks import UnknownTaskError, get_task_class

    try:
        return bool(get_task_class(task).needs_judge)
    except (UnknownTaskError, ImportError):
        return False


def read_sweep_file(path: str | Path) -> dict[str, Any]:
    """The sweep file's YAML mapping (name defaulting to the file's stem)."""
    path = Path(path)
    if not path.is_file():
        raise SweepConfigError(str(path), ["file not found"])
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SweepConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise SweepConfigError(str(path), ["the top level must be a mapping"])
    raw.setdefault("name", path.stem)
    return raw


def validate(cfg: SweepConfig, *, base: Path | None = None, hub: HubAccess | None = None,
             source: str = "sweep") -> ValidatedSweep:
    """The parsed sweep `cfg` validated: its relative folders anchored at `base` (default: the working directory),
    its models resolved through `hub` (default: the environment's cache and offline mode). Raises SweepConfigError
    (named after `source`) listing every problem."""
    base = (base or Path.cwd()).resolve()
    hub = hub or HubAccess()
    cfg = cfg.model_copy(update={
        "work_dir": str(anchored(cfg.work_dir, f"work/{cfg.name}", base)),
        "results_dir": str(anchored(cfg.results_dir, f"results/{cfg.name}", base)),
        "data_dir": str(anchored(cfg.data_dir, "", base)) if cfg.data_dir else None})
    sources: dict[str, ModelSource] = {}
    needs: set[str] = set()
    problems = _problems(cfg, base, hub, sources, needs)
    if problems:
        raise SweepConfigError(source, problems)
    return ValidatedSweep(cfg, base, hub, sources, frozenset(needs))


def load_sweep(path: str | Path, base: Path | None = None, hub: HubAccess | None = None,
               raw: dict[str, Any] | None = None) -> ValidatedSweep:
    """Parse and validate a sweep file (or its already-read mapping `raw`); raises SweepConfigError
    listing every problem. `hub` chooses the Hugging Face cache and offline mode (default: the environment's)."""
    if raw is None:
        raw = read_sweep_file(path)
    try:
        cfg = SweepConfig(**raw)
    except ValidationError as exc:
        raise SweepConfigError(str(path), _pydantic_problems(exc)) from None
    return validate(cfg, base=base, hub=hub, source=str(path))
