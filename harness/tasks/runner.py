"""Run one task against an endpoint and write its result: the one path the evaluate command and
the sweep's evaluation stage share, so both record a task the same way in the same files."""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any

import harness
from harness.tasks import get_task_class
from harness.tasks.base import TaskContext, TaskResult
from harness.util.atomic import atomic_write

RESULT_FILE = "result.json"
SAMPLES_FILE = "samples.jsonl"


def failed(result: TaskResult) -> bool:
    """True for a task that raised or was not ready (a task may also decline to run: not a failure)."""
    return result.status != "ok" and "error" in result.provenance


def _failure(name: str, category: str, ctx: TaskContext, error: str, detail: str = "") -> TaskResult:
    return TaskResult(task=name, category=category, status="not_run", reason=f"failed: {error}",
                      provenance={"harness_version": harness.__version__, "task": name, "error": error,
                                  "traceback": detail, "generation": ctx.generation.recorded(),
                                  "endpoint_model": ctx.endpoint.model, "limit": ctx.limit})


def run_task(name: str, ctx: TaskContext, options: dict[str, Any] | None = None) -> TaskResult:
    """One task; any error becomes a recorded failure, never an exception or a gap."""
    category = "unknown"
    try:
        cls = get_task_class(name)
        category = cls.category
        task = cls(options)
        problems = task.check_ready(ctx)
        if problems:
            return _failure(name, category, ctx, "not ready: " + "; ".join(problems))
        started = time.monotonic()
        result = task.run(ctx)
        result.provenance.setdefault("wall_s", round(time.monotonic() - started, 3))
        return result
    except Exception as exc:  # noqa: BLE001 - recorded with its traceback, the run goes on
        partial = getattr(exc, "partial_result", None)
        failure = _failure(name, category, ctx, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        if isinstance(partial, TaskResult):  # keep what the task did produce (samples, metrics)
            failure.samples, failure.metrics, failure.n_samples = partial.samples, partial.metrics, partial.n_samples
            failure.provenance = {**partial.provenance, **failure.provenance}
        return failure


def write_task_result(result: TaskResult, out_dir: Path) -> None:
    """out_dir/samples.jsonl, then out_dir/result.json (without samples): the result file marks the pair
    complete. Each is written atomically, secrets redacted."""
    from harness.util.redaction import redact

    lines = "".join(redact(s.model_dump_json()) + "\n" for s in result.samples)
    summary = redact(json.dumps(result.model_dump(mode="json", exclude={"samples"}), indent=2, sort_keys=True))
    atomic_write(out_dir / SAMPLES_FILE, lambda p: Path(p).write_text(lines))
    atomic_write(out_dir / RESULT_FILE, lambda p: Path(p).write_text(summary + "\n"))


def read_task_result(out_dir: Path) -> TaskResult:
    """What write_task_result wrote: the result with its samples again."""
    from harness.tasks.base import SampleRecord

    result = TaskResult.model_validate_json((out_dir / RESULT_FILE).read_text())
    result.samples = [SampleRecord.model_validate_json(line)
                      for line in (out_dir / SAMPLES_FILE).read_text().splitlines()]
    return result
