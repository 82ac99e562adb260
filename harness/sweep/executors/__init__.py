"""Executors run the sweep's job graph: `local` (one process, one job at a time) or `ray` (a Ray cluster).

Both run every job through `harness.sweep.stages.run_job`, so the store stays the single source of truth:
a job another driver has claimed comes back "busy" and is retried later, a failed job's dependants
are skipped and reported, everything else goes on.
"""

from __future__ import annotations

from harness.sweep.executors.base import Executor, GraphRun

EXECUTORS = ("local", "ray")


def get_executor(name: str, **options) -> Executor:
    if name == "local":
        from harness.sweep.executors.local import LocalExecutor

        return LocalExecutor(**options)
    if name == "ray":
        from harness.sweep.executors.ray import RayExecutor

        return RayExecutor(**options)
    raise ValueError(f"unknown executor {name!r}; known: {', '.join(EXECUTORS)}")


__all__ = ["EXECUTORS", "Executor", "GraphRun", "get_executor"]
