"""The sweep file: its schema, and every check that can run before any work starts.

`load_sweep(path)` parses the YAML and validates the whole grid in one pass; all
problems (unknown method, task or family, ratios outside (0, 1), infeasible expert
counts, missing data files, missing judge settings, ...) are collected and raised
together as one `SweepConfigError`, so a researcher fixes the file once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from harness.calibration.data import CalibrationSpec
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
    """vLLM options for one model (see harness.serving.VLLMServer)."""

    dtype: str = "auto"
    tensor_parallel_size: int = Field(1, ge=1)
    max_model_len: int | None = Field(None, ge=16)
    extra_args: list[str] = Field(default_factory=list)  # e.g. ["--enable-expert-parallel"]
    env: dict[str, str] = Field(default_factory=dict)
    startup_timeout_s: float = Field(1800.0, gt=0)

    def output_affecting(self) -> dict[str, Any]:
        """Settings that can change what the server answers (part of evaluation keys)."""
        return {"dtype": self.dtype, "max_model_len": self.max_model_len, "extra_args": self.extra_args}


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
    calibration_dtype: str = "auto"

    def is_local(self, base: Path) -> bool:
        return self.resolve_path(base).is_dir()

    def resolve_path(self, base: Path) -> Path:
        path = Path(self.path).expanduser()
        return path if path.is_absolute() else (base / path)

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
    serve: str | None = Field(None, description="'rubric' starts the deterministic toy rubric judge")

    @model_validator(mode="after")
    def _one_kind(self) -> JudgeSpec:
        if self.serve is None and not (self.base_url and self.model):
            raise ValueError("judge needs base_url and model, or serve: rubric")
        if self.serve is not None and self.serve != "rubric":
            raise ValueError(f"judge.serve must be 'rubric', got {self.serve!r}")
        return self


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
    materialisation: str = "shared_slots"
    # Which tasks make up each category score (default: every task of that category that ran).
    category_tasks: dict[str, list[str]] | None = None

    @field_validator("methods", mode="before")
    @classmethod
    def _method_shorthand(cls, value: Any) -> Any:
        return [{"name": v} if isinstance(v, str) else v for v in value or []]

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_shorthand(cls, value: Any) -> Any:
        return [{"name": v} if isinstance(v, str) else v for v in value or []]

    # Relative paths in the file are relative to this folder (the working directory at load time).
    _base: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def base(self) -> Path:
        return self._base

    def path_of(self, value: str | None, default: str) -> Path:
        path = Path(value or default).expanduser()
        return path if path.is_absolute() else (self.base / path).resolve()

    @property
    def work_path(self) -> Path:
        return self.path_of(self.work_dir, f"work/{self.name}")

    @property
    def results_path(self) -> Path:
        return self.path_of(self.results_dir, f"results/{self.name}")

    @property
    def data_path(self) -> Path | None:
        return self.path_of(self.data_dir, "") if self.data_dir else None

    def task_generation(self, task: TaskSpec, model: ModelSpec) -> GenerationSettings:
        merged = {**self.generation.model_dump(), **task.generation}
        if model.chat_template_kwargs is not None:
            merged["chat_template_kwargs"] = model.chat_template_kwargs
        return GenerationSettings(**merged)

    def judge_endpoint(self) -> Endpoint | None:
        if self.judge is None or self.judge.serve:
            return None
        return Endpoint(base_url=self.judge.base_url, model=self.judge.model, api_key_env=self.judge.api_key_env)


def expand_task_names(names: list[TaskSpec]) -> list[TaskSpec]:
    """Category names (coding, math, mc, creative_writing) become their paper task lists."""
    from harness.tasks import task_names
    from harness.tasks.categories import PAPER_TASKS

    known = set(task_names())
    out: list[TaskSpec] = []
    for spec in names:
        if spec.name in PAPER_TASKS and spec.name not in known:
            out += [spec.model_copy(update={"name": t}) for t in PAPER_TASKS[spec.name] if t in known]
        else:
            out.append(spec)
    return out


def _pydantic_problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        problems.append(f"{where}: {err['msg']}")
    return problems


def _model_problems(cfg: SweepConfig, model: ModelSpec, index: int) -> list[str]:
    from harness.archs import REGISTRY as FAMILIES
    from harness.archs import get_arch, read_config
    from harness.methods.constraints import ExpertConstraints, InfeasibleRatioError

    where = f"models[{index}] ({model.name})"
    problems: list[str] = []
    layout = model.experts
    local = model.resolve_path(cfg.base)
    if local.is_dir():
        try:
            config = read_config(local)
            arch = get_arch(config)
        except (FileNotFoundError, ValueError, json.JSONDecodeError) as exc:
            return [f"{where}: {exc}"]
        if model.family and model.family != arch.model_type:
            problems.append(f"{where}: family {model.family!r} but config.json says {arch.model_type!r}")
        constraints = ExpertConstraints.from_arch(arch)
        if layout and layout.num_experts != constraints.num_experts:
            problems.append(f"{where}: experts.num_experts {layout.num_experts} but config.json has "
                            f"{constraints.num_experts}")
    elif Path(model.path).is_absolute() or model.path.startswith((".", "~")):
        return [f"{where}: local model directory {local} does not exist"]
    else:  # a hub id: nothing to read offline, so the layout must be declared
        if model.family is None:
            problems.append(f"{where}: hub model {model.path!r} needs `family:` (one of {', '.join(FAMILIES)})")
        elif model.family not in FAMILIES:
            problems.append(f"{where}: unknown family {model.family!r}; supported: {', '.join(FAMILIES)}")
        if layout is None:
            if cfg.methods:
                problems.append(f"{where}: hub model {model.path!r} needs `experts:` (num_experts, top_k, "
                                "n_group) so ratios can be checked before download")
            return problems
        constraints = ExpertConstraints(num_experts=layout.num_experts, top_k=layout.top_k,
                                        n_group=layout.n_group, topk_group=layout.topk_group)
    for ratio in cfg.ratios:
        if not 0 < ratio < 1:
            continue
        try:
            constraints.target_count(ratio)
        except InfeasibleRatioError as exc:
            problems.append(f"{where}: ratio {ratio}: {exc}")
    return problems


def validate(cfg: SweepConfig) -> list[str]:
    """Every problem of a parsed sweep, without loading any model or dataset."""
    from harness.methods import UnknownMethodError, get_method, method_names
    from harness.tasks import UnknownTaskError, get_task_class
    from harness.tasks.base import TaskContext

    problems: list[str] = []
    for ratio in cfg.ratios:
        if not 0 < ratio < 1:
            problems.append(f"ratios: {ratio} is outside (0, 1)")
    if cfg.methods and not cfg.ratios:
        problems.append("ratios: methods are given but no ratios")
    if not cfg.methods and not cfg.baseline:
        problems.append("nothing to run: no methods and baseline: false")
    names = [m.result_name for m in cfg.methods]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"methods: {dup!r} appears twice; give one a `label:`")
    for i, method in enumerate(cfg.methods):
        try:
            get_method(method.name, method.config)
        except UnknownMethodError:
            problems.append(f"methods[{i}]: unknown method {method.name!r}; known: {', '.join(method_names())}")
        except ValidationError as exc:
            problems += [f"methods[{i}] ({method.name}).config.{p}" for p in _pydantic_problems(exc)]
    names = [m.name for m in cfg.models]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"models: name {dup!r} appears twice")
    for i, model in enumerate(cfg.models):
        problems += _model_problems(cfg, model, i)

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
        if task.category == "creative_writing" and cfg.judge is None:
            problems.append(f"tasks ({spec.name}): a judged task needs a `judge:` section "
                            "(base_url + model [+ api_key_env], or serve: rubric)")
        # The sweep gives every task the served model's tokenizer and the judge; readiness is about data.
        placeholder = Endpoint(base_url="http://validation.invalid/v1", model="validation",
                               tokenizer=cfg.models[0].path if cfg.models else None)
        judge = placeholder if cfg.judge is not None else None
        ctx = TaskContext(endpoint=placeholder, data_dir=data_dir, judge=judge)
        problems += task.check_ready(ctx)
    return problems


def load_sweep(path: str | Path, base: Path | None = None) -> SweepConfig:
    """Parse and validate a sweep file; raises SweepConfigError listing every problem."""
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
    try:
        cfg = SweepConfig(**raw)
    except ValidationError as exc:
        raise SweepConfigError(str(path), _pydantic_problems(exc)) from None
    cfg._base = (base or Path.cwd()).resolve()
    problems = validate(cfg)
    if problems:
        raise SweepConfigError(str(path), problems)
    return cfg
