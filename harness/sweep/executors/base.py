"""What every executor shares: dependency bookkeeping, skipped dependants, progress."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from harness.sweep.grid import Job
from harness.sweep.stages import Outcome, StageContext

log = logging.getLogger("harness.sweep")


@dataclass
class GraphRun:
    """The state of one pass over the graph: which jobs wait, run, finished, and how."""

    jobs: list[Job]
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_id = {j.id: j for j in self.jobs}
        self._pending = [j.id for j in self.jobs]

    @property
    def finished(self) -> bool:
        return not self._pending and not self.running

    def ready(self) -> list[Job]:
        """Jobs whose dependencies all finished well (in graph order); dependants of a failure are skipped."""
        found = []
        for job_id in list(self._pending):
            job = self._by_id[job_id]
            deps = [self.outcomes.get(d) for d in job.deps if d in self._by_id]
            if any(o is not None and o.status == "failed" for o in deps):
                self._pending.remove(job_id)
                self.outcomes[job_id] = Outcome(job_id, "failed", [f"{job.stage} {job.label}: skipped "
                                                                   f"(a job it needs failed)"])
                self.failures += self.outcomes[job_id].failures
                continue
            if all(o is not None and o.status in ("done", "cached") for o in deps):
                found.append(job)
        return found

    def start(self, job: Job) -> None:
        self._pending.remove(job.id)
        self.running.add(job.id)

    def finish(self, job: Job, outcome: Outcome) -> None:
        """Record an outcome; a busy job (claimed by another driver) goes back to the queue."""
        self.running.discard(job.id)
        if outcome.status == "busy":
            self._pending.insert(0, job.id)
            return
        self.outcomes[job.id] = outcome
        self.failures += outcome.failures

    def counts(self) -> dict[str, int]:
        done = sum(o.status in ("done", "cached") for o in self.outcomes.values())
        failed = sum(o.status == "failed" for o in self.outcomes.values())
        return {"queued": len(self._pending), "running": len(self.running), "done": done, "failed": failed}

    def status_line(self) -> str:
        c = self.counts()
        return f"jobs: {c['queued']} queued, {c['running']} running, {c['done']} done, {c['failed']} failed"


class Executor(ABC):
    name: str

    @abstractmethod
    def run(self, jobs: list[Job], ctx: StageContext) -> GraphRun:
        """Run the graph to the end (busy jobs retried until their claim is free); never raises for a job."""

    def report(self, graph: GraphRun, job: Job, outcome: Outcome, progress) -> None:
        if outcome.status in ("done", "failed"):
            log.info("%s %s: %s (%.1f s); %s", job.stage, job.label, outcome.status, outcome.seconds,
                     graph.status_line())
        if progress is not None:
            progress.set_postfix_str(graph.status_line(), refresh=False)
            if outcome.status != "busy":
                progress.update()
