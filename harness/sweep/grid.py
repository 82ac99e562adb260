"""The sweep's grid: which variants exist, their stage keys, and the graph of stage jobs.

Reads configs, never weights. A key is a versioned hash of exactly the settings that change
the stage's output (harness.sweep.store.stage_key); the settings themselves travel with the key into
the stage's done record, so the store describes itself. The graph says which jobs are needed
(what is not cached yet) and what each waits for: a plan for its calibration, a checkpoint for
its plan, a variant's evaluation for its checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.checkpoint.hub import ModelSource
from harness.sweep.config import MethodSpec, ModelSpec, SweepConfig, TaskSpec, ValidatedSweep, expand_task_names
from harness.sweep.store import Store, stage_key

BASELINE = "baseline"
# The stages of the graph, in the order a resumed sweep redoes them (`--force`, `--until`).


@dataclass
class Variant:
    """One model as it will be served: the baseline or one (method, ratio)."""

    model: ModelSpec
    method: MethodSpec | None
    ratio: float
    plan_key: str = ""
    plan_settings: dict[str, Any] = field(default_factory=dict)
    checkpoint_key: str = ""
    checkpoint_settings: dict[str, Any] = field(default_factory=dict)
    eval_keys: dict[str, str] = field(default_factory=dict)  # task name -> key
    eval_settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def method_name(self) -> str:
        return self.method.result_name if self.method else BASELINE

    @property
    def label(self) -> str:
        return f"{self.model.name} / {self.method_name} / {self.ratio:g}"

    @property
    def variant_id(self) -> str:
        return self.checkpoint_key or f"baseline-{self.model.slug}"


@dataclass
class ModelJobs:
    """One model of the sweep: where it comes from, its calibration key, its variants."""

    model: ModelSpec
    source: ModelSource
    calibration_settings: dict[str, Any]
    calibration_key: str
    needs: set[str]
    variants: list[Variant]

    @property
    def identity(self) -> dict[str, Any]:
        return self.source.identity

    @property
    def params_key(self) -> str:
        return stage_key("params", {"model": self.identity})

    @property
    def source_key(self) -> str:
        """What a baseline evaluation is keyed by: the model itself."""
        return stage_key("source", {"model": self.identity})


@dataclass
class Grid:
    models: list[ModelJobs]
    tasks: list[TaskSpec]

    def model(self, name: str) -> ModelJobs:
        return next(m for m in self.models if m.model.name == name)


@dataclass
class Filters:
    models: set[str] = field(default_factory=set)
    methods: set[str] = field(default_factory=set)
    ratios: set[float] = field(default_factory=set)
    tasks: set[str] = field(default_factory=set)

    @classmethod
    def parse(cls, items: Sequence[str]) -> Filters:
        found = cls()
        for item in items:
            kind, _, values = item.partition("=")
            if not values or kind not in ("model", "method", "ratio", "task"):
                raise SystemExit(f"--only takes model=NAME, method=NAME, ratio=R or task=NAME (got {item!r})")
            for value in values.split(","):
                if kind == "ratio":
                    found.ratios.add(float(value))
                else:
                    getattr(found, f"{kind}s").add(value)
        return found

    def keep(self, variant: Variant) -> bool:
        return ((not self.models or variant.model.name in self.models)
                and (not self.methods or variant.method_name in self.methods)
                and (not self.ratios or variant.method is None or variant.ratio in self.ratios))


def _method_settings(spec: MethodSpec) -> dict[str, Any]:
    """The method's config with its defaults filled in: what its plan key hashes."""
    from harness.methods import get_method

    return get_method(spec.name, spec.config).config.model_dump(mode="json")


def _data_checksums(cfg: SweepConfig, task) -> dict[str, str]:
    from harness.tasks.base import file_sha256

    if cfg.data_path is None:
        return {}
    return {str(p.relative_to(cfg.data_path)): file_sha256(p) for p in task.data_files(cfg.data_path) if p.is_file()}


def build_grid(sweep: ValidatedSweep, filters: Filters | None = None) -> Grid:
    """Every variant of a validated sweep and its stage keys."""
    from harness.archs import get_arch, read_config
    from harness.calibration.run import calibration_settings_for
    from harness.tasks import get_task_class

    cfg, needs = sweep.cfg, set(sweep.needs)
    filters = filters or Filters()
    tasks = [t for t in expand_task_names(cfg.tasks) if not filters.tasks or t.name in filters.tasks]
    method_configs = {m.result_name: _method_settings(m) for m in cfg.methods}
    task_info = {}
    for spec in tasks:
        task = get_task_class(spec.name)(spec.options)
        task_info[spec.name] = (task, _data_checksums(cfg, task))
    judge = cfg.judge.model_dump(exclude={"api_key_env"}) if cfg.judge else None

    models = []
    for model in cfg.models:
        source = sweep.source(model)
        calib_settings = calibration_settings_for(source, cfg.calibration, extras=needs, dtype=model.calibration_dtype)
        calib_key = stage_key("calibration", calib_settings)
        if model.family is None:
            model = model.model_copy(update={"family": get_arch(read_config(source.metadata_dir)).model_type})
        variants = [Variant(model, None, 0.0)] if cfg.baseline else []
        variants += [Variant(model, m, r) for m in cfg.methods for r in cfg.ratios]
        variants = [v for v in variants if filters.keep(v)]
        jobs = ModelJobs(model, source, calib_settings, calib_key, needs, variants)
        for v in variants:
            if v.method is not None:
                v.plan_settings = {"calibration": calib_key, "method": v.method.name,
                                   "config": method_configs[v.method.result_name],
                                   "ratio": v.ratio}
                v.plan_key = stage_key("plan", v.plan_settings)
                v.checkpoint_settings = {"plan": v.plan_key, "materialisation": cfg.materialisation}
                v.checkpoint_key = stage_key("checkpoint", v.checkpoint_settings)
            for spec in tasks:
                task, checksums = task_info[spec.name]
                settings = {
                    "model": v.checkpoint_key or jobs.source_key, "task": spec.name, "task_version": task.version,
                    "options": task.options.model_dump(mode="json"), "limit": spec.limit,
                    "generation": cfg.task_generation(spec, model).recorded(),
                    "serving": model.serving.output_affecting(), "data": checksums,
                    "judge": judge if task.needs_judge else None,
                }
                v.eval_settings[spec.name] = settings
                v.eval_keys[spec.name] = stage_key("eval", settings)
        models.append(jobs)
    return Grid(models, tasks)


# -- the job graph ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Resources:
    """What a job asks a cluster for (Ray); the local executor runs one job at a time."""

    num_gpus: int = 0
    num_cpus: int = 1
    memory_gb: float = 0.0


@dataclass
class Job:
    id: str
    stage: str  # calibration | plan | checkpoint | params | eval
    key: str  # the store key the job produces (for eval: the variant's server key; its tasks have their own)
    label: str
    model: str
    variant: int | None = None  # index into the model's variants
    deps: list[str] = field(default_factory=list)
    resources: Resources = field(default_factory=Resources)


def job_graph(cfg: SweepConfig, grid: Grid, store: Store, *, until: str = "eval", force: Sequence[str] = (),
              checkpoint_memory_gb: float = 8.0) -> list[Job]:
    """The jobs still needed, in an order that respects their dependencies (a topological order)."""
    force = set(force)
    from harness.sweep.stages import PIPELINE

    last = PIPELINE.index(until)
    jobs: list[Job] = []
    for mj in grid.models:
        gpus = mj.model.serving.tensor_parallel_size
        compressed = [(i, v) for i, v in enumerate(mj.variants) if v.method]
        to_write = [(i, v) for i, v in compressed if not store.is_done("checkpoint", v.checkpoint_key)
                    or {"calibration", "plan", "checkpoint"} & force
                    or (until == "eval" and store.is_evicted("checkpoint", v.checkpoint_key)
                        and _evals_to_do(v, store, force))]
        calib_id = f"calibration:{mj.calibration_key}"
        if to_write:
            jobs.append(Job(calib_id, "calibration", mj.calibration_key, mj.model.name, mj.model.name,
                            resources=Resources(num_gpus=gpus)))
        if last == 0:
            continue
        for i, v in to_write:
            plan_id = f"plan:{v.plan_key}"
            jobs.append(Job(plan_id, "plan", v.plan_key, v.label, mj.model.name, i, [calib_id]))
            if last >= 2:
                jobs.append(Job(f"checkpoint:{v.checkpoint_key}", "checkpoint", v.checkpoint_key, v.label,
                                mj.model.name, i, [plan_id], Resources(memory_gb=checkpoint_memory_gb)))
        if last < 3:
            continue
        if any(v.method is None for v in mj.variants):
            jobs.append(Job(f"params:{mj.params_key}", "params", mj.params_key, f"{mj.model.name} (parameters)",
                            mj.model.name))
        written = {v.checkpoint_key for _, v in to_write}
        for i, v in enumerate(mj.variants):
            if "eval" not in force and all(store.is_done("eval", k) for k in v.eval_keys.values()):
                continue
            deps = [f"checkpoint:{v.checkpoint_key}"] if v.checkpoint_key in written else []
            jobs.append(Job(f"eval:{v.variant_id}", "eval", v.variant_id, v.label, mj.model.name, i, deps,
                            Resources(num_gpus=gpus)))
    return jobs


def _evals_to_do(v: Variant, store: Store, force: set[str]) -> bool:
    """Whether the variant still has an evaluation to run (an evicted checkpoint is written again only then)."""
    return "eval" in force or any(not store.is_done("eval", k) for k in v.eval_keys.values())
