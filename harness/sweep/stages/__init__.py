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
import importlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.sweep.store import Store
from harness.util.redaction import RedactingFormatter

if TYPE_CHECKING:  # the grid reads STAGES from here
    from harness.sweep.config import SweepConfig
    from harness.sweep.grid import Grid, Job, ModelJobs, Variant

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


# The one declaration of the stages, in pipeline order: name -> the function that produces its output.
# `--force` and `--until` name the user-facing ones; the store and the grid read this table.
STAGES: dict[str, str] = {
    "calibration": "harness.sweep.stages.calibrate:run",
    "plan": "harness.sweep.stages.plan:run",
    "checkpoint": "harness.sweep.stages.checkpoint:run",
    "params": "harness.sweep.stages.checkpoint:run_params",
    "eval": "harness.sweep.stages.evaluate:run",
}
PIPELINE: tuple[str, ...] = tuple(name for name in STAGES if name != "params")  # what a user forces or stops at


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


@dataclass
class JobRun:
    """One job being run: what a stage function gets. It does the bookkeeping every stage shares
    (the done-or-forced check, the log, the failure record, the done record, the event), so a
    stage is only the production of its output. A stage returns whether it computed anything, or
    raises; failures of parts (a task of an evaluation) are collected here."""

    ctx: StageContext
    job: Job
    failures: list[str] = field(default_factory=list)

    @property
    def store(self) -> Store:
        return self.ctx.store

    @property
    def cfg(self) -> SweepConfig:
        return self.ctx.cfg

    @property
    def model(self) -> ModelJobs:
        return self.ctx.model(self.job)

    @property
    def variant(self) -> Variant:
        return self.ctx.variant(self.job)

    def to_compute(self, stage: str, key: str) -> bool:
        """Whether (stage, key) must be computed: not done yet, or forced (then its old output goes first)."""
        store = self.store
        if not store.is_done(stage, key):
            return True
        if stage not in self.ctx.force:
            return False
        store.reset(stage, key)
        return True

    def produce(self, stage: str, key: str, label: str, settings: dict[str, Any],
                make: Callable[[Path], dict[str, Any]], *, redo: bool = False) -> bool:
        """The shared shape of every stage: skip when done (and not forced); otherwise, under a log,
        `make(output_dir)` writes the output and returns what the done record adds; then the done
        record, the event and the test kill point. `redo` makes a done output again (an evicted
        checkpoint). Raises StageFailed (recorded) when `make` raises."""
        if not self.to_compute(stage, key) and not redo:
            return False
        store = self.store
        with self.logged(stage, key, label):
            out = store.dir(stage, key)
            out.mkdir(parents=True, exist_ok=True)
            try:
                meta = make(out)
            except BaseException:
                if out.is_dir() and not any(out.iterdir()):
                    out.rmdir()  # a stage that failed before writing leaves nothing behind
                raise
            store.mark_done(stage, key, {**meta, "job": label}, settings=settings)
            store.event("computed", stage=stage, key=key, job=label, model=self.job.model)
        kill_point(stage)
        return True

    @contextlib.contextmanager
    def logged(self, stage: str, key: str, label: str) -> Iterator[Path]:
        """A piece of work with its own log; an exception is recorded under failures/ and becomes StageFailed."""
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
            self.failures.append(f"{stage} {label}: {type(exc).__name__}: {first}")
            raise StageFailed from exc
        finally:
            root.removeHandler(handler)
            handler.close()

    def fail(self, message: str) -> None:
        """A part that could not run (no checkpoint to serve): reported, and the job counts as failed."""
        self.failures.append(message)


def stage_function(stage: str) -> Callable[[JobRun], bool]:
    module, _, name = STAGES[stage].partition(":")
    return getattr(importlib.import_module(module), name)


def run_job(ctx: StageContext, job: Job) -> Outcome:
    """Run one job of the graph under its claim; see the module docstring."""
    store = ctx.store
    started = time.monotonic()
    with store.claim(job.stage, job.key) as claimed:
        if not claimed:
            return Outcome(job.id, "busy")
        store.event("job_started", job=job.id, stage=job.stage, label=job.label)
        run = JobRun(ctx, job)
        try:
            computed = stage_function(job.stage)(run)
        except StageFailed:
            computed = True
        status = "failed" if run.failures else "done" if computed else "cached"
        store.event("job_finished", job=job.id, stage=job.stage, label=job.label, status=status)
        return Outcome(job.id, status, run.failures, time.monotonic() - started)
