"""The stages of a sweep, each an idempotent job on the store: run it twice, or on two workers, and the
store ends the same.

`run_job` is the one way a job runs, whatever the executor: it claims the job's key (a second
driver or worker gets "busy" and comes back later), returns "cached" when the output is already
done, otherwise runs the stage with its own log under `logs/` and records a failure under
`failures/` when it raises. The store's journal (`events.jsonl`) records when each job started and
finished, in which process: what tests and `python -m harness.store ls` read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import SweepConfig
from harness.grid import Grid, Job, ModelJobs, Variant
from harness.redaction import RedactingFormatter
from harness.store import Store

log = logging.getLogger("harness.sweep")

# Test hooks: "point[:n]" SIGKILLs the process at the n-th time it reaches `point`; with KILL_ONCE_ENV
# naming a file, only the first process to get there dies (a retried Ray task then goes through).
KILL_ENV = "HARNESS_SWEEP_KILL_AT"
KILL_ONCE_ENV = "HARNESS_SWEEP_KILL_ONCE"
_kill_counts: dict[str, int] = {}


def kill_point(point: str) -> None:
    wanted = os.environ.get(KILL_ENV, "")
    name, _, nth = wanted.partition(":")
    if not wanted or name != point:
        return
    _kill_counts[point] = _kill_counts.get(point, 0) + 1
    if _kill_counts[point] != int(nth or 1):
        return
    once = os.environ.get(KILL_ONCE_ENV)
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)


class StageFailed(Exception):
    """A part of a job failed and was recorded; what depends on it is skipped."""


@dataclass
class Outcome:
    job: str
    status: str  # done | cached | busy | failed
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class StageContext:
    """Everything a stage needs; picklable, so a Ray worker gets the same context as the driver."""

    cfg: SweepConfig
    grid: Grid
    force: frozenset[str] = frozenset()
    progress: bool = True
    _judge: Any = None

    @property
    def store(self) -> Store:
        return Store(self.cfg.work_path)

    def to_compute(self, stage: str, key: str) -> bool:
        """Whether (stage, key) must be computed: not done yet, or forced (then its old output goes first)."""
        store = self.store
        if not store.is_done(stage, key):
            return True
        if stage not in self.force:
            return False
        store.reset(stage, key)
        return True

    def model(self, job: Job) -> ModelJobs:
        return self.grid.model(job.model)

    def variant(self, job: Job) -> Variant:
        return self.model(job).variants[job.variant]

    def judge_endpoint(self):
        """The sweep's judge; a local one (`serve:`) is started once per process."""
        judge = self.cfg.judge
        if judge is None:
            return None
        if not judge.serve:
            return self.cfg.judge_endpoint()
        if self._judge is None:
            from harness.tasks.rubric_judge import LOCAL_JUDGES, RubricJudge

            self._judge = RubricJudge(reply=LOCAL_JUDGES[judge.serve]).start()
        return self._judge.endpoint()

    def close(self) -> None:
        if self._judge is not None:
            self._judge.stop()
            self._judge = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_judge": None}  # a judge server does not travel to another process

    # -- one logged, recorded piece of work --------------------------------------------------------
    @contextlib.contextmanager
    def logged(self, stage: str, key: str, label: str, failures: list[str]) -> Iterator[Path]:
        store = self.store
        log_path = store.root / "logs" / f"{stage}-{key}.log"
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
            store.record_failure(stage, key, label, exc, log_path)
            first = str(exc).splitlines()[0] if str(exc) else ""
            failures.append(f"{stage} {label}: {type(exc).__name__}: {first}")
            raise StageFailed from exc
        finally:
            root.removeHandler(handler)
            handler.close()


def _stage_function(stage: str):
    from harness.stages import calibrate, checkpoint, evaluate, plan

    return {"calibration": calibrate.run, "plan": plan.run, "checkpoint": checkpoint.run,
            "params": checkpoint.run_params, "eval": evaluate.run}[stage]


def run_job(ctx: StageContext, job: Job) -> Outcome:
    """Run one job of the graph under its claim; see the module docstring."""
    store = ctx.store
    started = time.monotonic()
    with store.claim(job.stage, job.key) as claimed:
        if not claimed:
            return Outcome(job.id, "busy")
        store.event("job_started", job=job.id, stage=job.stage, label=job.label)
        failures: list[str] = []
        try:
            computed = _stage_function(job.stage)(ctx, job, failures)
        except StageFailed:
            computed = True
        status = "failed" if failures else "done" if computed else "cached"
        store.event("job_finished", job=job.id, stage=job.stage, label=job.label, status=status)
        return Outcome(job.id, status, failures, time.monotonic() - started)
