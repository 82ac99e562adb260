"""`python -m harness.sweep sweeps/X.yaml`: the whole grid, cached, resumable.

For each model: calibrate once (with every statistic the sweep's methods need), plan
each (method, ratio), write each checkpoint, then serve each variant (the baseline
included) once for all its missing tasks. Every output is stored under a content hash
of the settings that change it (harness.store), so a re-run does only missing work, and
a run killed at any point resumes without losing or duplicating results. A failed job
is recorded with its log and the sweep goes on; the exit code says whether everything
succeeded. The results table is rebuilt from the stored outputs at the end of every run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
from harness.config import MethodSpec, ModelSpec, SweepConfig, SweepConfigError, TaskSpec, expand_task_names, load_sweep
from harness.hub import ModelSource
from harness.redaction import RedactingFormatter, redact
from harness.store import STAGES, Store, stage_key, write_json

log = logging.getLogger("harness.sweep")

BASELINE = "baseline"
# Test hook: "point[:n]" SIGKILLs this process at the n-th time it reaches `point` (see _kill_point).
KILL_ENV = "HARNESS_SWEEP_KILL_AT"


# -- the grid ----------------------------------------------------------------------------
@dataclass
class Variant:
    """One model as it will be served: the baseline or one (method, ratio)."""

    model: ModelSpec
    method: MethodSpec | None
    ratio: float
    plan_key: str = ""
    checkpoint_key: str = ""
    eval_keys: dict[str, str] = field(default_factory=dict)  # task name -> key

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
    model: ModelSpec
    source: ModelSource
    calibration_settings: dict[str, Any]
    calibration_key: str
    needs: set[str]
    variants: list[Variant]

    @property
    def identity(self) -> dict[str, Any]:
        return self.source.identity


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


def _method_settings(spec: MethodSpec) -> tuple[dict[str, Any], set[str]]:
    from harness.methods import get_method

    method = get_method(spec.name, spec.config)
    return method.config.model_dump(mode="json"), set(method.needs)


def _data_checksums(cfg: SweepConfig, task) -> dict[str, str]:
    from harness.tasks.base import file_sha256

    if cfg.data_path is None:
        return {}
    return {str(p.relative_to(cfg.data_path)): file_sha256(p) for p in task.data_files(cfg.data_path) if p.is_file()}


def build_grid(cfg: SweepConfig, filters: Filters) -> tuple[list[ModelJobs], list[TaskSpec]]:
    """Every variant and its stage keys; reads configs, never weights."""
    from harness.archs import get_arch, read_config
    from harness.calibration.run import calibration_settings_for
    from harness.tasks import get_task_class

    tasks = [t for t in expand_task_names(cfg.tasks) if not filters.tasks or t.name in filters.tasks]
    method_info = {m.result_name: _method_settings(m) for m in cfg.methods}
    needs = set().union(*(n for _, n in method_info.values())) if method_info else set()
    task_info = {}
    for spec in tasks:
        task = get_task_class(spec.name)(spec.options)
        task_info[spec.name] = (task, _data_checksums(cfg, task))
    judge = cfg.judge.model_dump(exclude={"api_key_env"}) if cfg.judge else None

    jobs = []
    for model in cfg.models:
        source = cfg.source(model)
        calib_settings = calibration_settings_for(source, cfg.calibration, mean_out="mean_out" in needs,
                                                  router_similarity="router_similarity" in needs,
                                                  dtype=model.calibration_dtype)
        calib_key = stage_key("calibration", calib_settings)
        if model.family is None:
            model = model.model_copy(update={"family": get_arch(read_config(source.metadata_dir)).model_type})
        variants = [Variant(model, None, 0.0)] if cfg.baseline else []
        variants += [Variant(model, m, r) for m in cfg.methods for r in cfg.ratios]
        variants = [v for v in variants if filters.keep(v)]
        for v in variants:
            if v.method is not None:
                config, _ = method_info[v.method.result_name]
                v.plan_key = stage_key("plan", {"calibration": calib_key, "method": v.method.name,
                                                "config": config, "ratio": v.ratio})
                v.checkpoint_key = stage_key("checkpoint", {"plan": v.plan_key,
                                                            "materialisation": cfg.materialisation})
            source_key = v.checkpoint_key or stage_key("source", {"model": source.identity})
            for spec in tasks:
                task, checksums = task_info[spec.name]
                v.eval_keys[spec.name] = stage_key("eval", {
                    "model": source_key, "task": spec.name, "options": task.options.model_dump(mode="json"),
                    "limit": spec.limit, "generation": cfg.task_generation(spec, model).recorded(),
                    "serving": model.serving.output_affecting(), "data": checksums,
                    "judge": judge if task.category == "creative_writing" else None,
                })
        jobs.append(ModelJobs(model, source, calib_settings, calib_key, needs, variants))
    return jobs, tasks


# -- running -----------------------------------------------------------------------------
class Runner:
    def __init__(self, cfg: SweepConfig, store: Store, tasks: list[TaskSpec], force: set[str],
                 progress: bool = True):
        self.cfg = cfg
        self.store = store
        self.tasks = tasks
        self.force = force
        self.progress = progress
        self.failed: list[str] = []
        self._judge_server = None
        self._kill_counts: dict[str, int] = {}

    # test hook -------------------------------------------------------------------------------
    def _kill_point(self, point: str) -> None:
        wanted = os.environ.get(KILL_ENV, "")
        if not wanted:
            return
        name, _, nth = wanted.partition(":")
        if name != point:
            return
        self._kill_counts[point] = self._kill_counts.get(point, 0) + 1
        if self._kill_counts[point] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)

    # one job, with its log and failure record ---------------------------------------------------
    @contextlib.contextmanager
    def job(self, stage: str, key: str, label: str) -> Iterator[Path]:
        log_path = self.store.root / "logs" / f"{stage}-{key}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_path)
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        started = time.monotonic()
        try:
            log.info("%s %s: started", stage, label)
            yield log_path
            log.info("%s %s: done in %.1f s", stage, label, time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001 — recorded, reported, and the sweep goes on
            log.exception("%s %s: failed", stage, label)
            self.store.record_failure(stage, key, label, exc, log_path)
            self.failed.append(f"{stage} {label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            raise _JobFailed from exc
        finally:
            root.removeHandler(handler)
            handler.close()

    # stages ------------------------------------------------------------------------------------
    def source_dir(self, model: ModelSpec) -> Path:
        """The model's checkpoint on local disk (a hub model is downloaded into the cache on first use)."""
        return self.cfg.source(model).directory()

    def calibrate(self, jobs: ModelJobs) -> Path:
        from harness.calibration.run import stored_calibration

        key = jobs.calibration_key
        out = self.store.dir("calibration", key)
        if self.store.is_done("calibration", key) and "calibration" not in self.force:
            return out
        with self.job("calibration", key, jobs.model.name):
            computed, out = stored_calibration(
                self.store, jobs.source, self.cfg.calibration, mean_out="mean_out" in jobs.needs,
                router_similarity="router_similarity" in jobs.needs, dtype=jobs.model.calibration_dtype,
                sequential=self.cfg.sequential_calibration, batch_size=self.cfg.calibration_batch_size,
                progress=self.progress, force="calibration" in self.force)
            if computed != key:  # one key function for the grid and the stage: a mismatch is a bug
                raise RuntimeError(f"calibration stored under {computed}, but the grid expects {key}")
            self.store.event("computed", stage="calibration", key=key, model=jobs.model.name)
        self._kill_point("calibration")
        return out

    def plan(self, jobs: ModelJobs, variant: Variant, calib_dir: Path) -> Path:
        from harness.archs import get_arch
        from harness.calibration.statistics import CalibrationStatistics
        from harness.methods import get_method
        from harness.methods.constraints import ExpertConstraints

        path = self.store.dir("plan", variant.plan_key) / "plan.json"
        if self.store.is_done("plan", variant.plan_key):
            if "plan" not in self.force:
                return path
            self.store.reset("plan", variant.plan_key)
        with self.job("plan", variant.plan_key, variant.label):
            stats = CalibrationStatistics.load(calib_dir)
            constraints = ExpertConstraints.from_arch(get_arch(jobs.source.metadata_dir))
            method = get_method(variant.method.name, variant.method.config)
            plan = method.plan(stats, variant.ratio, constraints, calibration_key=jobs.calibration_key)
            plan.save(path)
            self.store.mark_done("plan", variant.plan_key, {"plan_hash": plan.plan_hash(), "job": variant.label})
            self.store.event("computed", stage="plan", key=variant.plan_key, job=variant.label)
        self._kill_point("plan")
        return path

    def checkpoint(self, jobs: ModelJobs, variant: Variant, plan_path: Path) -> Path:
        from harness.checkpoint import write_checkpoint
        from harness.plan import Plan

        key = variant.checkpoint_key
        out = self.store.dir("checkpoint", key) / "model"
        if self.store.is_done("checkpoint", key):
            if "checkpoint" not in self.force:
                return out
            self.store.reset("checkpoint", key)
        with self.job("checkpoint", key, variant.label):
            info = write_checkpoint(Plan.load(plan_path), self.source_dir(jobs.model), out,
                                    materialisation=self.cfg.materialisation,
                                    recipe_extra={"sweep": self.cfg.name, "model": jobs.model.name,
                                                  "plan_key": variant.plan_key},
                                    progress=self.progress)
            self.store.mark_done("checkpoint", key, {"total_params": info.total_params,
                                                     "activated_params": info.activated_params,
                                                     "job": variant.label})
            self.store.event("computed", stage="checkpoint", key=key, job=variant.label)
        self._kill_point("checkpoint")
        return out

    def source_params(self, jobs: ModelJobs) -> dict[str, int]:
        from harness.checkpoint import count_parameters

        key = stage_key("params", {"model": jobs.identity})
        if not self.store.is_done("params", key):
            total, activated = count_parameters(self.source_dir(jobs.model))
            self.store.mark_done("params", key, {"total_params": total, "activated_params": activated})
        meta = self.store.done_meta("params", key)
        return {"total_params": meta["total_params"], "activated_params": meta["activated_params"]}

    def judge_endpoint(self):
        if self.cfg.judge is None:
            return None
        if not self.cfg.judge.serve:
            return self.cfg.judge_endpoint()
        if self._judge_server is None:
            from harness.tasks.rubric_judge import LOCAL_JUDGES, RubricJudge

            self._judge_server = RubricJudge(reply=LOCAL_JUDGES[self.cfg.judge.serve]).start()
        return self._judge_server.endpoint()

    def close(self) -> None:
        if self._judge_server is not None:
            self._judge_server.stop()
            self._judge_server = None

    def dequantised(self, jobs: ModelJobs, variant: Variant, model_dir: Path) -> Path:
        """A dequantised copy of a quantised checkpoint, stored once (serving.dequantise)."""
        from harness.archs import read_config
        from harness.quantisation import dequantised_copy, detect_format

        if not detect_format(read_config(model_dir)).is_quantised:
            return model_dir
        of = variant.checkpoint_key or stage_key("source", {"model": jobs.identity})
        key = stage_key("dequantised", {"model": of})
        out = self.store.dir("dequantised", key) / "model"
        if not self.store.is_done("dequantised", key):
            dequantised_copy(model_dir, out)
            self.store.mark_done("dequantised", key, {"job": variant.label}, settings={"model": of})
        return out

    def evaluate(self, jobs: ModelJobs, variant: Variant, model_dir: Path) -> None:
        """Serve the variant once and run every task it still lacks."""
        from harness.serving import VLLMServer, complete
        from harness.tasks import get_task_class
        from harness.tasks.base import Endpoint, TaskContext

        missing = [t for t in self.tasks if "eval" in self.force
                   or not self.store.is_done("eval", variant.eval_keys[t.name])]
        if not missing:
            return
        serving = jobs.model.serving
        if serving.dequantise:
            try:
                with self.job("dequantise", variant.variant_id, variant.label):
                    model_dir = self.dequantised(jobs, variant, model_dir)
            except _JobFailed:
                return
        server_log = self.store.root / "logs" / f"vllm-{variant.variant_id}.log"
        name = f"{jobs.model.slug}-{variant.method_name}-{variant.ratio:g}"
        server_key = stage_key("serve", {"variant": variant.variant_id})
        try:
            with self.job("serve", server_key, variant.label):
                server = VLLMServer(model_dir, served_model_name=name, dtype=serving.dtype,
                                    max_model_len=serving.max_model_len,
                                    tensor_parallel_size=serving.tensor_parallel_size,
                                    extra_args=serving.extra_args, env=serving.env, log_path=server_log,
                                    startup_timeout_s=serving.startup_timeout_s)
                server.__enter__()
                _register_server(self.store, server)
                try:  # the sanity gate: vLLM loaded the checkpoint and answers
                    reply = complete(server.base_url, name, "The capital of France is", max_tokens=4)
                    if not reply.get("choices") or reply.get("usage", {}).get("completion_tokens", 0) < 1:
                        raise RuntimeError(f"sanity prompt got no completion: {reply}")
                except BaseException:
                    server.__exit__(None, None, None)
                    raise
        except _JobFailed:
            for spec in missing:  # every task of this variant is lost with its server
                self.store.record_failure("eval", variant.eval_keys[spec.name], f"{variant.label} / {spec.name}",
                                          RuntimeError(f"not run: the server failed to start (log: {server_log})"),
                                          server_log)
            return
        try:
            endpoint = Endpoint(base_url=server.base_url, model=name, tokenizer=str(model_dir))
            for spec in missing:
                key = variant.eval_keys[spec.name]
                if self.store.is_done("eval", key):  # only when forced
                    self.store.reset("eval", key)
                with contextlib.suppress(_JobFailed), self.job("eval", key, f"{variant.label} / {spec.name}"):
                    if not server.alive():
                        raise RuntimeError(f"the vLLM server died (log: {server_log})")
                    task = get_task_class(spec.name)(spec.options)
                    judge = self.judge_endpoint() if task.category == "creative_writing" else None
                    out = self.store.dir("eval", key)
                    ctx = TaskContext(endpoint=endpoint, generation=self.cfg.task_generation(spec, jobs.model),
                                      limit=spec.limit, data_dir=self.cfg.data_path,
                                      # shared by every variant: evalplus ground truth, lm-eval data caches
                                      work_dir=self.store.root / "task_cache" / spec.name,
                                      judge=judge, progress=self.progress)
                    result = task.run(ctx)
                    _save_result(out, result)
                    self.store.mark_done("eval", key, {"job": f"{variant.label} / {spec.name}"})
                    self.store.event("computed", stage="eval", key=key, job=f"{variant.label} / {spec.name}")
                    self._kill_point("eval")
        finally:
            server.__exit__(None, None, None)
            _unregister_server(self.store, server)


class _JobFailed(Exception):
    """A job failed and was recorded; its dependents are skipped."""


def _save_result(out: Path, result) -> None:
    """Samples first, then the result: the result file marks the pair complete. Secrets are redacted."""
    lines = "".join(redact(s.model_dump_json()) + "\n" for s in result.samples)
    from harness.atomic import atomic_write

    atomic_write(out / "samples.jsonl", lambda p: Path(p).write_text(lines))
    write_json(out / "result.json", result.model_dump(mode="json", exclude={"samples"}))


# -- vLLM servers orphaned by a killed run ------------------------------------------------------
def _servers_file(store: Store) -> Path:
    return store.root / "servers.json"


def _register_server(store: Store, server) -> None:
    import psutil

    entries = []
    for pid in server.pids():
        with contextlib.suppress(psutil.Error):
            entries.append({"pid": pid, "create_time": psutil.Process(pid).create_time()})
    write_json(_servers_file(store), entries)


def _unregister_server(store: Store, server) -> None:
    _servers_file(store).unlink(missing_ok=True)


def reap_orphans(store: Store) -> int:
    """Kill vLLM processes a killed earlier run of this sweep left behind."""
    import psutil

    path = _servers_file(store)
    if not path.is_file():
        return 0
    killed = 0
    for entry in json.loads(path.read_text() or "[]"):
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(entry["pid"])
            if abs(proc.create_time() - entry["create_time"]) < 1e-3:
                for p in [*proc.children(recursive=True), proc]:
                    with contextlib.suppress(psutil.Error):
                        p.kill()
                        killed += 1
    path.unlink(missing_ok=True)
    return killed


# -- results -------------------------------------------------------------------------------------
def collect_results(cfg: SweepConfig, store: Store, jobs: list[ModelJobs], tasks: list[TaskSpec]):
    """The tidy table and the per-sample table, rebuilt from stored outputs."""
    import pandas as pd

    from harness.results import rows_to_frame
    from harness.tasks.base import SampleRecord, TaskResult
    from harness.tasks.categories import category_score

    rows: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    for mj in jobs:
        family = mj.model.family or ""
        for v in mj.variants:
            if v.method is None:
                key = stage_key("params", {"model": mj.identity})
                params = store.done_meta("params", key) if store.is_done("params", key) else {}
            else:
                params = store.done_meta("checkpoint", v.checkpoint_key) \
                    if store.is_done("checkpoint", v.checkpoint_key) else {}
            results: list[TaskResult] = []
            for spec in tasks:
                key = v.eval_keys[spec.name]
                if not store.is_done("eval", key):
                    continue
                out = store.dir("eval", key)
                result = TaskResult.model_validate_json((out / "result.json").read_text())
                results.append(result)
                for line in (out / "samples.jsonl").read_text().splitlines():
                    record = SampleRecord.model_validate_json(line)
                    if (record.model_extra or {}).get("excluded"):  # e.g. an unparseable judge reply
                        continue
                    samples.append({"model": mj.model.name, "method": v.method_name, "ratio": v.ratio,
                                    "task": result.task, "category": result.category,
                                    "sample_id": record.sample_id, "score": record.score})
            base = {
                "model": mj.model.name, "family": family, "method": v.method_name, "ratio": v.ratio,
                "total_params_b": params.get("total_params", float("nan")) / 1e9,
                "activated_params_b": params.get("activated_params", float("nan")) / 1e9,
                "source": "harness", "harness_version": harness.__version__,
            }
            for r in results:
                if r.status != "ok":
                    continue
                prov = json.dumps({"eval_key": v.eval_keys[r.task], "checkpoint_key": v.checkpoint_key,
                                   "provenance": _stable(r.provenance)}, sort_keys=True, default=str)
                metrics = dict(r.metrics)
                if r.score is not None:
                    metrics.setdefault("score", r.score)
                for metric, value in sorted(metrics.items()):
                    if not _is_fraction_metric(metric, value):  # counts and raw means stay in result.json
                        continue
                    rows.append({**base, "task": r.task, "category": r.category, "metric": metric,
                                 "value": float(value), "n_samples": r.n_samples, "provenance": prov})
            for category in sorted({r.category for r in results}):
                members = (cfg.category_tasks or {}).get(category)
                score = category_score(category, [r for r in results if members is None or r.task in members])
                if score is None:
                    continue
                prov = json.dumps({"definition": score.definition, "tasks": score.tasks, "missing": score.missing},
                                  sort_keys=True)
                rows.append({**base, "task": category, "category": category, "metric": "accuracy",
                             "value": score.value, "provenance": prov})
    table = rows_to_frame(rows) if rows else None
    if table is not None:
        table = table.sort_values(["model", "method", "ratio", "task", "metric"], kind="stable")
        table = table.reset_index(drop=True)
    sample_table = pd.DataFrame(samples) if samples else None
    if sample_table is not None:
        sample_table = sample_table.sort_values(["model", "method", "ratio", "task", "sample_id"], kind="stable")
        sample_table = sample_table.reset_index(drop=True)
    return table, sample_table


def _is_fraction_metric(name: str, value: float) -> bool:
    """The table holds fractions in [0, 1]; `n_*` counts and `mean_*` raw means are not."""
    return not name.startswith(("n_", "mean_")) and value is not None and 0.0 <= float(value) <= 1.0


def _stable(provenance: dict[str, Any]) -> dict[str, Any]:
    """Provenance without wall-clock fields, so a resumed sweep's table equals a fresh one's."""
    return {k: v for k, v in provenance.items() if k not in ("started", "finished", "duration_s", "timestamp")}


def write_outputs(cfg: SweepConfig, table, sample_table) -> list[Path]:
    from harness.results import write_results, write_samples

    out = cfg.results_path
    written: list[Path] = []
    if table is None:
        return written
    for suffix in (".parquet", ".csv"):
        write_results(table, out / f"results{suffix}")
        written.append(out / f"results{suffix}")
    if sample_table is not None:
        write_samples(sample_table, out / "samples.parquet")
        written.append(out / "samples.parquet")
    if cfg.plots:
        try:
            from harness.plots import render_all

            written += render_all(table, out / "plots", formats=("png",))
        except Exception as exc:  # noqa: BLE001 — a figure that cannot be drawn (e.g. one point) is not fatal
            log.warning("figures not drawn: %s", exc)
    return written


# -- CLI -------------------------------------------------------------------------------------------
def dry_run(cfg: SweepConfig, store: Store, jobs: list[ModelJobs], tasks: list[TaskSpec]) -> None:
    def mark(done: bool) -> str:
        return "cached" if done else "to do"

    print(f"sweep {cfg.name}: {len(jobs)} model(s), {sum(len(j.variants) for j in jobs)} variant(s), "
          f"{len(tasks)} task(s); work dir {store.root}")
    for mj in jobs:
        compressed = any(v.method for v in mj.variants)
        calib_done = store.is_done("calibration", mj.calibration_key)
        print(f"\n{mj.model.name} ({mj.source.describe()})")
        if compressed:
            extras = ", ".join(sorted(mj.needs)) or "routed statistics only"
            print(f"  calibration {mj.calibration_key} [{mark(calib_done)}] ({extras})")
        for v in mj.variants:
            stages = []
            if v.method:
                stages += [f"plan {mark(store.is_done('plan', v.plan_key))}",
                           f"checkpoint {mark(store.is_done('checkpoint', v.checkpoint_key))}"]
            done = sum(store.is_done("eval", k) for k in v.eval_keys.values())
            stages.append(f"eval {done}/{len(v.eval_keys)} cached")
            print(f"  {v.method_name:<20} {v.ratio:<5g} " + ", ".join(stages))
    print(f"\ntasks: {', '.join(t.name + (f' (limit {t.limit})' if t.limit else '') for t in tasks)}")


def run(cfg: SweepConfig, *, filters: Filters | None = None, force: Sequence[str] = (), dry: bool = False,
        progress: bool = True, until: str = "eval") -> int:
    """Run (or resume) a validated sweep; returns the exit code (0 = everything succeeded)."""
    from tqdm.auto import tqdm

    store = Store(cfg.work_path)
    jobs, tasks = build_grid(cfg, filters or Filters())
    if dry:
        dry_run(cfg, store, jobs, tasks)
        return 0
    orphans = reap_orphans(store)
    if orphans:
        print(f"stopped {orphans} vLLM process(es) left by an interrupted run")
    runner = Runner(cfg, store, tasks, set(force), progress=progress)
    started = time.monotonic()
    try:
        for mj in jobs:
            compressed = [v for v in mj.variants if v.method]
            to_write = [v for v in compressed if not store.is_done("checkpoint", v.checkpoint_key)
                        or {"plan", "checkpoint", "calibration"} & runner.force]
            calib_dir = None
            if to_write:
                with contextlib.suppress(_JobFailed):
                    calib_dir = runner.calibrate(mj)
            if until == "calibration":
                continue
            for v in tqdm(compressed, desc=f"{mj.model.name}: plans and checkpoints", disable=not progress):
                if v in to_write and calib_dir is None:
                    runner.failed.append(f"checkpoint {v.label}: skipped (calibration failed)")
                    continue
                with contextlib.suppress(_JobFailed):
                    if v in to_write:
                        plan_path = runner.plan(mj, v, calib_dir)
                        if until != "plan":
                            runner.checkpoint(mj, v, plan_path)
            if until != "eval":
                continue
            for v in mj.variants:
                if v.method is None:
                    with contextlib.suppress(_JobFailed), runner.job("params", v.variant_id, v.label):
                        runner.source_params(mj)
                    model_dir = None
                    with contextlib.suppress(_JobFailed), runner.job("source", v.variant_id, v.label):
                        model_dir = runner.source_dir(mj.model)
                    if model_dir is None:
                        continue
                elif store.is_done("checkpoint", v.checkpoint_key):
                    model_dir = store.dir("checkpoint", v.checkpoint_key) / "model"
                else:
                    runner.failed.append(f"eval {v.label}: skipped (no checkpoint)")
                    continue
                runner.evaluate(mj, v, model_dir)
    finally:
        runner.close()
    table, sample_table = collect_results(cfg, store, jobs, tasks)
    written = write_outputs(cfg, table, sample_table)
    missing = [(v.label, t) for mj in jobs for v in mj.variants for t, k in v.eval_keys.items()
               if until == "eval" and not store.is_done("eval", k)]
    _summary(cfg, table, written, runner.failed, missing, time.monotonic() - started)
    return 0 if not missing and not runner.failed else 1


def _summary(cfg, table, written, failed, missing, elapsed_s: float) -> None:
    print(f"\nsweep {cfg.name} finished in {elapsed_s:.1f} s")
    if table is not None:
        scores = table[table["task"] == table["category"]]
        if not scores.empty:
            pivot = scores.pivot_table(index=["model", "method", "ratio"], columns="task", values="value")
            print(pivot.round(3).to_string())
    for path in written[:3]:
        print(f"wrote {path}")
    if failed:
        print(f"\n{len(failed)} failure(s) (logs under {cfg.work_path / 'logs'}, records under "
              f"{cfg.work_path / 'failures'}):")
        for line in failed:
            print(f"  - {line}")
    if missing:
        print(f"\n{len(missing)} task result(s) missing; re-run to retry them.")


def _raise_system_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="sweep YAML file")
    parser.add_argument("--dry-run", action="store_true", help="validate, print the jobs and what is cached")
    parser.add_argument("--only", action="append", default=[], metavar="KIND=VALUES",
                        help="filter: model=NAME, method=NAME (baseline too), ratio=R, task=NAME; repeatable")
    parser.add_argument("--force", action="append", default=[], choices=STAGES,
                        help="recompute this stage (and so everything after it) for the selected jobs")
    parser.add_argument("--until", choices=STAGES, default="eval",
                        help="stop after this stage (e.g. write every checkpoint now, evaluate later)")
    parser.add_argument("--no-progress", action="store_true")
    rehearsal = parser.add_argument_group("rehearsal", "the sweep as written, on tiny stand-ins of its models, "
                                          "on this machine (CPU) in minutes: the step before a cluster launch")
    rehearsal.add_argument("--rehearse", action="store_true", help="rehearse instead of running for real")
    rehearsal.add_argument("--rehearsal-dir", default=None, metavar="DIR",
                           help="where the rehearsal keeps its stand-ins, work and results (default rehearsals/<name>)")
    rehearsal.add_argument("--rehearse-samples", type=int, default=2, metavar="N",
                           help="samples per task in the rehearsal (default 2)")
    rehearsal.add_argument("--data-dir", default=None, metavar="DIR",
                           help="offline benchmark data for the rehearsal (default: the sweep's data_dir, else "
                           "../shared/datasets)")
    args = parser.parse_args(argv)
    # Job logs get INFO; the console only warnings with --no-progress.
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING if args.no_progress else logging.INFO)
    console.setFormatter(RedactingFormatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.INFO, handlers=[console])
    report = None
    try:
        if args.rehearse:
            from harness.rehearsal import prepare

            cfg, report = prepare(args.sweep, root=args.rehearsal_dir, data_dir=args.data_dir,
                                  samples=args.rehearse_samples)
            print("\n".join(report.lines()))
        else:
            cfg = load_sweep(args.sweep)
    except (SweepConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # SIGTERM (a scheduler's cancel) unwinds like Ctrl-C, so vLLM servers are stopped on the way out.
    signal.signal(signal.SIGTERM, _raise_system_exit)
    force = set(args.force)
    # Recomputing a stage recomputes what depends on it.
    for i, stage in enumerate(STAGES):
        if stage in force:
            force.update(STAGES[i:])
    code = run(cfg, filters=Filters.parse(args.only), force=sorted(force), dry=args.dry_run,
               progress=not args.no_progress, until=args.until)
    if report is not None:
        for task, why in report.tasks_not_rehearsed.items():
            print(f"not rehearsed: {task}: {why}")
        verdict = "dry run" if args.dry_run else "passed" if code == 0 else "FAILED"
        print(f"rehearsal {verdict}: {len(report.tasks_rehearsed)} task(s) rehearsed, "
              f"{len(report.tasks_not_rehearsed)} not; report {cfg.work_path.parent / 'rehearsal.json'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
