"""The local executor: every job in this process, one after another, in graph order."""

from __future__ import annotations

import time

from harness.sweep.executors.base import Executor, GraphRun
from harness.sweep.grid import Job
from harness.sweep.stages import StageContext, run_job

# How long to wait before retrying jobs another driver holds.
BUSY_WAIT_S = 2.0


class LocalExecutor(Executor):
    name = "local"

    def run(self, jobs: list[Job], ctx: StageContext) -> GraphRun:
        from tqdm.auto import tqdm

        graph = GraphRun(jobs)
        with tqdm(total=len(jobs), desc="sweep", unit="job", disable=not ctx.progress) as bar:
            while not graph.finished:
                progressed = False
                for job in graph.ready():
                    graph.start(job)
                    outcome = run_job(ctx, job)
                    graph.finish(job, outcome)
                    self.report(graph, job, outcome, bar)
                    progressed |= outcome.status != "busy"
                if not progressed and not graph.finished:
                    time.sleep(BUSY_WAIT_S)  # everything left is claimed by another driver (or waits on it)
        return graph
