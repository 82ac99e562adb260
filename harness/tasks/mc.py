"""Multiple-choice benchmarks through lm-eval's `local-completions` model, 0-shot.

lm-eval scores each choice by the log-likelihood of its continuation, which it reads
from the server's echoed prompt log-probabilities (`echo` + `logprobs`, one generated
token that is discarded). The prompts are lm-eval's own: at run time we write small task
YAMLs into the work dir that `include:` the built-in YAMLs by absolute path, so
`doc_to_text`, choices, targets and `!function` hooks stay exactly the built-in ones.

- With a data dir, the YAMLs point the task at the offline copies in `<data_dir>/mc`
  (json builder, arrow cache under the work dir, never the user's HF cache). rte has no
  offline copy (its data licence is unclear): it is reported as not run, with the reason.
- Without one, each YAML is the built-in task itself (same name, tags dropped), reading
  its hub dataset through the user's normal HF cache.

Only our generated folder is indexed (`include_defaults=False`): indexing lm-eval's
thousands of built-in YAMLs costs ~12 s per task here and is not needed.

`limit` for MMLU: the category treats MMLU as one task, so `limit=N` means N questions in
total (not N per subject, which would make MMLU 57x larger than any other task at the
same limit). The N questions are a systematic sample of the 14,042 test questions in
subject order, so every subject contributes in proportion to its size and the
size-weighted group accuracy is the plain mean over the sampled questions. Option
`limit_scope="per_subject"` gives lm-eval's own meaning (N per subject) instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from harness.tasks.base import SampleRecord, Task, TaskContext, TaskError, TaskResult, file_sha256
from harness.util.atomic import atomic_write

NUM_FEWSHOT = 0
DEFAULT_MAX_LENGTH = 2048  # lm-eval's default, used when the server does not report max_model_len

# MMLU test rows per subject (cais/mmlu; the same counts as the offline files).
MMLU_TEST_SIZES: dict[str, int] = {
    "abstract_algebra": 100, "anatomy": 135, "astronomy": 152, "business_ethics": 100,
    "clinical_knowledge": 265, "college_biology": 144, "college_chemistry": 100,
    "college_computer_science": 100, "college_mathematics": 100, "college_medicine": 173,
    "college_physics": 102, "computer_security": 100, "conceptual_physics": 235, "econometrics": 114,
    "electrical_engineering": 145, "elementary_mathematics": 378, "formal_logic": 126, "global_facts": 100,
    "high_school_biology": 310, "high_school_chemistry": 203, "high_school_computer_science": 100,
    "high_school_european_history": 165, "high_school_geography": 198,
    "high_school_government_and_politics": 193, "high_school_macroeconomics": 390,
    "high_school_mathematics": 270, "high_school_microeconomics": 238, "high_school_physics": 151,
    "high_school_psychology": 545, "high_school_statistics": 216, "high_school_us_history": 204,
    "high_school_world_history": 237, "human_aging": 223, "human_sexuality": 131, "international_law": 121,
    "jurisprudence": 108, "logical_fallacies": 163, "machine_learning": 112, "management": 103,
    "marketing": 234, "medical_genetics": 100, "miscellaneous": 783, "moral_disputes": 346,
    "moral_scenarios": 895, "nutrition": 306, "philosophy": 311, "prehistory": 324,
    "professional_accounting": 282, "professional_law": 1534, "professional_medicine": 272,
    "professional_psychology": 612, "public_relations": 110, "security_studies": 245, "sociology": 201,
    "us_foreign_policy": 100, "virology": 166, "world_religions": 171,
}
MMLU_SUBJECTS = tuple(sorted(MMLU_TEST_SIZES))
SPLIT_KEYS = ("training_split", "validation_split", "test_split")


# -- task definitions (data) --------------------------------------------------------------
@dataclass(frozen=True)
class MCSpec:
    """One benchmark: which built-in lm-eval YAML, which split, which offline file, which metric."""

    builtin_task: str  # lm-eval task name
    builtin_yaml: str  # relative to lm_eval/tasks
    split: str  # the split lm-eval evaluates ("test" or "validation")
    data_file: str | None  # relative to data_dir; None = no offline copy
    metric: Literal["acc", "acc_norm"]  # the task score
    no_offline_reason: str = ""


SPECS: dict[str, MCSpec] = {
    "arc_challenge": MCSpec("arc_challenge", "arc/arc_challenge.yaml", "test", "mc/arc_challenge/test.jsonl",
                            "acc_norm"),
    "arc_easy": MCSpec("arc_easy", "arc/arc_easy.yaml", "test", "mc/arc_easy/test.jsonl", "acc_norm"),
    "boolq": MCSpec("boolq", "super_glue/boolq/default.yaml", "validation", "mc/boolq/validation.jsonl.gz", "acc"),
    "hellaswag": MCSpec("hellaswag", "hellaswag/hellaswag.yaml", "validation", "mc/hellaswag/validation.jsonl.gz",
                        "acc_norm"),
    "openbookqa": MCSpec("openbookqa", "openbookqa/openbookqa.yaml", "test", "mc/openbookqa/test.jsonl",
                         "acc_norm"),
    "winogrande": MCSpec("winogrande", "winogrande/default.yaml", "validation", "mc/winogrande/validation.jsonl",
                         "acc"),
    # No offline copy ships with the shared datasets (licence of the RTE data unclear); a user
    # who has one can put it at this path (GLUE schema: sentence1, sentence2, label, idx).
    "rte": MCSpec("rte", "glue/rte/default.yaml", "validation", "mc/rte/validation.jsonl", "acc",
                  no_offline_reason="rte has no offline copy in the data dir (its data licence is unclear, "
                                    "so ../shared/datasets leaves it out); put the GLUE rte validation split "
                                    "as JSONL at {path} to run it offline, or run without a data dir "
                                    "to use the hub dataset"),
    "mmlu": MCSpec("mmlu", "mmlu/default/mmlu_{subject}.yaml", "test", "mc/mmlu/{subject}/test.jsonl", "acc"),
}


def lm_eval_tasks_dir() -> Path:
    """The installed lm-eval's built-in task folder (found without importing lm-eval)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or spec.origin is None:
        raise TaskError("lm-eval is not installed; install the harness with its evaluation dependencies "
                        "(`pip install 'lm-eval[api]==0.4.13'`)")
    return Path(spec.origin).parent / "tasks"


# -- YAML generation --------------------------------------------------------------------
def task_yaml(builtin_yaml: Path, *, task_name: str | None = None, split: str | None = None,
              data_files: dict[str, Path] | None = None, cache_dir: Path | None = None) -> dict[str, Any]:
    """A task config that reuses a built-in one; with `data_files` it reads those local files.

    Every split the built-in names but the local files lack is set to null, or lm-eval
    would index a split the json builder never made.
    """
    config: dict[str, Any] = {"include": str(builtin_yaml.resolve()), "tag": []}
    if task_name is not None:
        config["task"] = task_name
    if data_files is not None:
        if split is None or split not in data_files:
            raise ValueError(f"split {split!r} must be one of the data files {sorted(data_files)}")
        kwargs: dict[str, Any] = {"data_files": {k: str(Path(v).resolve()) for k, v in data_files.items()}}
        if cache_dir is not None:
            kwargs["cache_dir"] = str(Path(cache_dir).resolve())
        config.update({"dataset_path": "json", "dataset_name": None, "dataset_kwargs": kwargs})
        config.update({key: None for key in SPLIT_KEYS})
        config[f"{split}_split"] = split
    return config


def group_yaml(group: str, tasks: list[str]) -> dict[str, Any]:
    """A group whose acc is the mean over all its questions (subtasks weighted by their size)."""
    return {"group": group, "task": list(tasks),
            "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}],
            "metadata": {"version": 1}}


def write_yamls(out_dir: Path, configs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Write `<name>.yaml` per config (atomically); returns each file's sha256."""
    hashes = {}
    for name, config in configs.items():
        text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
        atomic_write(out_dir / f"{name}.yaml", lambda tmp, text=text: Path(tmp).write_text(text))
        hashes[f"{name}.yaml"] = hashlib.sha256(text.encode()).hexdigest()
    return hashes


def mmlu_selection(limit: int | None, scope: Literal["total", "per_subject"] = "total") -> dict[str, list[int]]:
    """Test-row indices to evaluate per MMLU subject (subjects with none are left out).

    scope "total": `limit` questions spread systematically over all 14,042 (subject order,
    evenly spaced, at interval midpoints), so subjects count in proportion to their size.
    scope "per_subject": the first `limit` rows of every subject (lm-eval's meaning).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if limit is None or scope == "per_subject":
        return {s: list(range(min(limit or MMLU_TEST_SIZES[s], MMLU_TEST_SIZES[s]))) for s in MMLU_SUBJECTS}
    total = sum(MMLU_TEST_SIZES.values())
    limit = min(limit, total)
    picked: dict[str, list[int]] = {}
    starts, offset = [], 0
    for subject in MMLU_SUBJECTS:
        starts.append((offset, subject))
        offset += MMLU_TEST_SIZES[subject]
    for i in range(limit):
        position = math.floor((i + 0.5) * total / limit)
        start, subject = max((s for s in starts if s[0] <= position), key=lambda s: s[0])
        picked.setdefault(subject, []).append(position - start)
    return picked


@dataclass
class LmEvalPlan:
    """What one task run asks of lm-eval: YAMLs to write, the task or group to evaluate, which docs."""

    configs: dict[str, dict[str, Any]]  # file stem -> YAML content
    target: str  # lm-eval task or group name
    limit: int | None = None  # first N docs of every task
    samples: dict[str, list[int]] | None = None  # or explicit doc indices per task
    provenance: dict[str, Any] = field(default_factory=dict)


# -- options ----------------------------------------------------------------------------
class MCOptions(BaseModel):
    """Request plumbing; none of these change a score."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(1, ge=1)  # prompts per HTTP request
    max_length: int | None = Field(None, ge=2)  # context window; None = the server's max_model_len
    max_retries: int = Field(3, ge=1)
    timeout_s: int = Field(600, ge=1)


class MMLUOptions(MCOptions):
    limit_scope: Literal["total", "per_subject"] = "total"  # what `limit` counts (see module doc)


# -- the task ---------------------------------------------------------------------------
class MCTask(Task):
    """One lm-eval multiple-choice benchmark; subclasses pick the spec."""

    category: ClassVar[str] = "mc"
    Options = MCOptions

    @property
    def spec(self) -> MCSpec:
        return SPECS[self.name]

    def data_files(self, data_dir: Path) -> list[Path]:
        if self.spec.no_offline_reason:  # optional: missing means "not run", not "not ready"
            return []
        return [data_dir / self.spec.data_file]

    def check_ready(self, ctx: TaskContext) -> list[str]:
        problems = super().check_ready(ctx)
        if not ctx.endpoint.tokenizer:
            problems.append(f"{self.name}: lm-eval needs the model's tokenizer (Endpoint.tokenizer, a local dir "
                            "or hub id) to split prompts into context and continuation tokens")
        return problems

    # -- what to run (overridden by MMLU) --
    def plan(self, ctx: TaskContext, cache_dir: Path) -> LmEvalPlan:
        """The task YAMLs to write and what to ask lm-eval for."""
        spec = self.spec
        builtin = lm_eval_tasks_dir() / spec.builtin_yaml
        if ctx.data_dir is None:
            return LmEvalPlan({spec.builtin_task: task_yaml(builtin)}, spec.builtin_task, limit=ctx.limit)
        name = f"{spec.builtin_task}_local"
        config = task_yaml(builtin, task_name=name, split=spec.split, cache_dir=cache_dir,
                           data_files={spec.split: ctx.data_dir / spec.data_file})
        return LmEvalPlan({name: config}, name, limit=ctx.limit)

    def offline_files(self, data_dir: Path) -> list[Path]:
        return [data_dir / self.spec.data_file]

    # -- run --
    def run(self, ctx: TaskContext) -> TaskResult:
        missing_reason = self.not_run_reason(ctx)
        if missing_reason:
            return TaskResult(task=self.name, category=self.category, status="not_run", reason=missing_reason,
                              provenance=self.base_provenance(ctx))
        problems = self.check_ready(ctx)
        if problems:
            raise TaskError("; ".join(problems))
        with _work_dir(ctx.work_dir) as work:
            task_dir = work / "lm_eval_tasks" / self.name
            # Variants evaluated at the same time (the Ray executor) share the work dir: one at a time per task
            # here, as lm-eval indexes every YAML under the task's folder, which each run rewrites.
            with _exclusive(work / "lm_eval_tasks" / f"{self.name}.lock"):
                shutil.rmtree(task_dir, ignore_errors=True)  # a previous run's YAMLs must not be indexed
                plan = self.plan(ctx, work / "hf_datasets_cache")
                yaml_hashes = write_yamls(task_dir, plan.configs)
                check_scoring_endpoint(ctx, self.name)
                max_length = self.options.max_length or server_max_model_len(ctx) or DEFAULT_MAX_LENGTH
                try:
                    raw, loaded = _evaluate(ctx, self.options, task_dir, plan, max_length)
                except TaskError:
                    raise
                except Exception as exc:  # lm-eval or the server failed: say which task, keep the cause
                    raise TaskError(f"{self.name}: lm-eval failed against {ctx.endpoint.base_url}: "
                                    f"{type(exc).__name__}: {exc}") from exc
        records = sample_records(raw, loaded["tasks"], self.spec.metric, self.name)
        metrics = task_metrics(raw, plan.target)
        filled = fill_stderr(metrics, records)
        if self.spec.metric not in metrics:
            raise TaskError(f"{self.name}: lm-eval reported no {self.spec.metric} (got {sorted(metrics)})")
        files = self.offline_files(ctx.data_dir) if ctx.data_dir else []
        provenance = self.base_provenance(ctx)
        provenance.update({
            "data_sha256": {str(p.relative_to(ctx.data_dir)): file_sha256(p) for p in files} if files else {},
            "data_source": "offline" if ctx.data_dir else "hub",
            "lm_eval_version": _lm_eval_version(),
            "lm_eval_model": "local-completions",
            "lm_eval_task": plan.target,
            "num_fewshot": NUM_FEWSHOT,
            "score_metric": self.spec.metric,
            "max_length": max_length,
            "task_yaml_sha256": yaml_hashes,
            "task_config_sha256": {name: _config_hash(cfg) for name, cfg in raw["configs"].items()},
            "task_versions": raw.get("versions", {}),
            "n_shot": raw.get("n-shot", {}),
            "stderr_from_samples": filled,
            "samples_per_task": {name: len(rows) for name, rows in raw.get("samples", {}).items()},
            **plan.provenance,
        })
        return TaskResult(task=self.name, category=self.category, score=metrics[self.spec.metric],
                          metrics=metrics, n_samples=len(records), samples=records, provenance=provenance)

    def not_run_reason(self, ctx: TaskContext) -> str:
        if ctx.data_dir is None or not self.spec.no_offline_reason:
            return ""
        path = ctx.data_dir / self.spec.data_file
        return "" if path.exists() else self.spec.no_offline_reason.format(path=path)


class MMLUTask(MCTask):
    """MMLU: the 57 per-subject tasks under one group whose acc is weighted by subject size."""

    Options = MMLUOptions

    def data_files(self, data_dir: Path) -> list[Path]:
        return self.offline_files(data_dir)

    def offline_files(self, data_dir: Path) -> list[Path]:
        return [data_dir / "mc" / "mmlu" / s / f"{split}.jsonl" for s in MMLU_SUBJECTS for split in ("test", "dev")]

    def prompt_count(self, limit: int | None) -> int:
        """Questions asked (the selection `plan` makes), without reading data: the sweep's cost estimate."""
        return sum(len(rows) for rows in mmlu_selection(limit, self.options.limit_scope).values())

    def plan(self, ctx: TaskContext, cache_dir: Path) -> LmEvalPlan:
        selected = mmlu_selection(ctx.limit, self.options.limit_scope)
        configs: dict[str, dict[str, Any]] = {}
        rows_by_task: dict[str, list[int]] = {}
        for subject, rows in selected.items():
            builtin = lm_eval_tasks_dir() / self.spec.builtin_yaml.format(subject=subject)
            if ctx.data_dir is None:
                name, config = f"mmlu_{subject}", task_yaml(builtin)
            else:
                name = f"mmlu_{subject}_local"
                root = ctx.data_dir / "mc" / "mmlu" / subject
                config = task_yaml(builtin, task_name=name, split="test", cache_dir=cache_dir,
                                   data_files={"test": root / "test.jsonl", "dev": root / "dev.jsonl"})
            configs[name] = config
            rows_by_task[name] = rows
        group = "mmlu_hub" if ctx.data_dir is None else "mmlu_local"
        configs[f"_{group}"] = group_yaml(group, list(rows_by_task))
        provenance = {"mmlu_limit_scope": self.options.limit_scope,
                      "mmlu_rows": {s: _ranges(rows) for s, rows in selected.items()}}
        # lm-eval takes either one limit for every task or explicit rows per task.
        return LmEvalPlan(configs, group, limit=None, samples=None if ctx.limit is None else rows_by_task,
                          provenance=provenance)


# -- lm-eval plumbing -------------------------------------------------------------------
@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (released when the process dies)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextmanager
def _work_dir(work_dir: Path | None) -> Iterator[Path]:
    """The run's scratch dir; a temporary one (removed afterwards) when none is given."""
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        yield Path(work_dir)
        return
    with tempfile.TemporaryDirectory(prefix="harness-mc-") as tmp:
        yield Path(tmp)


def check_scoring_endpoint(ctx: TaskContext, task: str) -> None:
    """One request of the kind lm-eval sends (echo + logprobs), so a server that cannot score
    prompts fails with its own message instead of deep inside lm-eval's retry loop."""
    import requests

    url = f"{ctx.endpoint.base_url.rstrip('/')}/completions"
    body = {"model": ctx.endpoint.model, "prompt": "Question: 1 + 1?\nAnswer: 2", "max_tokens": 1,
            "temperature": 0, "logprobs": 1, "echo": True}
    try:
        reply = requests.post(url, json=body, timeout=120,
                              headers={"Authorization": f"Bearer {ctx.endpoint.api_key()}"})
    except requests.RequestException as exc:
        raise TaskError(f"{task}: cannot reach {url}: {exc}") from exc
    if not reply.ok:
        raise TaskError(f"{task}: {url} refused a log-likelihood request (echo + logprobs): "
                        f"HTTP {reply.status_code}: {reply.text[:500]}")
    try:
        logprobs = reply.json()["choices"][0]["logprobs"]["token_logprobs"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise TaskError(f"{task}: {url} answered without echoed prompt log-probabilities, which lm-eval's "
                        f"multiple-choice scoring needs: {reply.text[:500]}") from exc
    if not isinstance(logprobs, list) or len(logprobs) < 3:
        raise TaskError(f"{task}: {url} did not echo the prompt's token log-probabilities (got {logprobs!r})")


def server_max_model_len(ctx: TaskContext) -> int | None:
    """vLLM reports each served model's context length in /v1/models; other servers may not."""
    import requests

    try:
        reply = requests.get(f"{ctx.endpoint.base_url.rstrip('/')}/models", timeout=30,
                             headers={"Authorization": f"Bearer {ctx.endpoint.api_key()}"})
        reply.raise_for_status()
        models = reply.json().get("data", [])
    except (requests.RequestException, ValueError):
        return None
    for entry in models:
        if entry.get("id") == ctx.endpoint.model and entry.get("max_model_len"):
            return int(entry["max_model_len"])
    return None


def make_lm(ctx: TaskContext, options: MCOptions, max_length: int):
    """lm-eval's `local-completions` model against the endpoint, tokenizing with the model's tokenizer."""
    from lm_eval.api.registry import get_model

    args: dict[str, Any] = {
        "base_url": f"{ctx.endpoint.base_url.rstrip('/')}/completions",
        "model": ctx.endpoint.model,
        "tokenizer": ctx.endpoint.tokenizer,
        "tokenizer_backend": "huggingface",
        "tokenized_requests": True,  # token ids go to the server: the scored tokens are exactly lm-eval's
        "num_concurrent": ctx.generation.concurrency,
        "batch_size": options.batch_size,
        "max_retries": options.max_retries,
        "max_length": max_length,
        "timeout": options.timeout_s,
    }
    if ctx.endpoint.api_key_env:
        args["header"] = {"Authorization": f"Bearer {ctx.endpoint.api_key()}"}
    return get_model("local-completions")(**args)


def _evaluate(ctx: TaskContext, options: MCOptions, task_dir: Path, plan: LmEvalPlan,
              max_length: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run lm-eval on our generated task folder only; returns its results and the loaded tasks."""
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    loaded = manager.load([plan.target])
    for task in loaded["tasks"].values():
        task.set_config(key="num_fewshot", value=NUM_FEWSHOT)
        task.set_fewshot_seed(seed=0)
    lm = make_lm(ctx, options, max_length)
    raw = evaluate(lm=lm, task_dict=loaded, limit=plan.limit, samples=plan.samples, log_samples=True)
    if raw is None:
        raise TaskError(f"lm-eval returned no results for {plan.target}")
    return raw, loaded


def gold_index(task: Any, doc: dict[str, Any]) -> int:
    """The gold choice index, as lm-eval's multiple-choice scoring defines it."""
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, str):
        choices = task.doc_to_choice(doc)
        gold = choices.index(gold) if gold in choices else -1  # lm-eval: no gold, the doc scores 0
    return int(gold)


def sample_records(raw: dict[str, Any], tasks: dict[str, Any], metric: str, label: str) -> list[SampleRecord]:
    """Per-doc records: prompt, per-choice log-likelihoods, chosen and gold index, score."""
    import numpy as np

    records = []
    for task_name, rows in raw.get("samples", {}).items():
        task = tasks[task_name]
        subject = task_name.removeprefix("mmlu_").removesuffix("_local") if task_name.startswith("mmlu_") else None
        for row in rows:
            contexts = [arg[0] for arg in row["arguments"]]
            continuations = [arg[1] for arg in row["arguments"]]
            lls = [float(resp[0]) for resp in row["filtered_resps"]]
            choices = task.doc_to_choice(row["doc"])
            pred = int(np.argmax(lls))
            pred_norm = int(np.argmax(np.array(lls) / np.array([float(len(c)) for c in choices])))
            gold = gold_index(task, row["doc"])
            chosen = pred_norm if metric == "acc_norm" else pred
            score = float(row[metric])
            if score != float(chosen == gold):  # our reading of lm-eval's output must agree with its metric
                raise TaskError(f"{task_name} doc {row['doc_id']}: lm-eval scored {metric}={score} but "
                                f"chosen {chosen} vs gold {gold}; the log-sample format changed")
            records.append(SampleRecord(
                sample_id="/".join(str(p) for p in (label, subject, row["doc_id"]) if p is not None),
                prompt=contexts[0] if len(set(contexts)) == 1 else contexts,
                output=None, extracted=chosen, target=gold, score=score,
                doc_id=row["doc_id"], subject=subject, continuations=continuations, loglikelihoods=lls,
                is_greedy=[bool(resp[1]) for resp in row["filtered_resps"]], pred=pred, pred_norm=pred_norm,
                **{m: float(row[m]) for m in ("acc", "acc_norm") if m in row},
            ))
    return records


def task_metrics(raw: dict[str, Any], target: str) -> dict[str, float]:
    """acc / acc_norm and their stderr for the evaluated task or group ("acc,none" -> "acc")."""
    found = raw["results"].get(target)
    if found is None:
        raise TaskError(f"lm-eval results lack {target!r} (have {sorted(raw['results'])})")
    metrics = {}
    for key, value in found.items():
        name, _, filter_name = key.partition(",")
        if filter_name == "none" and name in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr"):
            if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
                metrics[name] = float(value)
    return metrics


def fill_stderr(metrics: dict[str, float], records: list) -> list[str]:
    """Add a missing acc/acc_norm stderr as lm-eval computes it for a mean (sample std / sqrt(n)).

    lm-eval leaves a group's stderr out when a subtask has fewer than two samples (a
    limited MMLU run); over the pooled questions the usual formula still applies.
    Returns the metrics it filled.
    """
    from statistics import stdev

    filled = []
    for name in ("acc", "acc_norm"):
        values = [getattr(r, name) for r in records if getattr(r, name, None) is not None]
        if name in metrics and f"{name}_stderr" not in metrics and len(values) >= 2:
            metrics[f"{name}_stderr"] = stdev(values) / math.sqrt(len(values))
            filled.append(f"{name}_stderr")
    return filled


def _config_hash(config: dict[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, default=_stable_repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _stable_repr(value: Any) -> str:
    """Functions hash by name and source, not by their memory address."""
    import inspect

    if callable(value):
        try:
            source = inspect.getsource(value)
        except (OSError, TypeError):
            source = ""
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', repr(type(value)))}:{source}"
    return repr(value)


def _ranges(rows: list[int]) -> str:
    """Row indices as compact ranges: [0,1,2,7] -> "0-2,7"."""
    parts, start = [], None
    for i, row in enumerate(rows):
        if start is None:
            start = row
        if i + 1 == len(rows) or rows[i + 1] != row + 1:
            parts.append(str(start) if start == row else f"{start}-{row}")
            start = None
    return ",".join(parts)


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm-eval")


# -- registry classes -------------------------------------------------------------------
class ArcChallenge(MCTask):
    name = "arc_challenge"


class ArcEasy(MCTask):
    name = "arc_easy"


class BoolQ(MCTask):
    name = "boolq"


class HellaSwag(MCTask):
    name = "hellaswag"


class OpenBookQA(MCTask):
    name = "openbookqa"


class RTE(MCTask):
    name = "rte"


class WinoGrande(MCTask):
    name = "winogrande"


class MMLU(MMLUTask):
    name = "mmlu"
