"""Plan: a method turns the model's statistics into a plan at one ratio."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.sweep.stages import JobRun


def run(job: JobRun) -> bool:
    from harness.calibration.statistics import CalibrationStatistics
    from harness.methods import make_plan

    mj, v, store = job.model, job.variant, job.store

    def make(out: Path) -> dict[str, Any]:
        stats = CalibrationStatistics.load(store.dir("calibration", mj.calibration_key))
        plan = make_plan(stats, v.method.name, v.method.config, v.ratio, mj.source.metadata_dir)
        plan.save(out / "plan.json")
        return {"plan_hash": plan.plan_hash()}

    return job.produce("plan", v.plan_key, v.label, v.plan_settings, make)
