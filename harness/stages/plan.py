"""Plan: a method turns the model's statistics into a plan at one ratio."""

from __future__ import annotations

from harness.grid import Job
from harness.stages import StageContext, kill_point


def run(ctx: StageContext, job: Job, failures: list[str]) -> bool:
    from harness.archs import get_arch
    from harness.calibration.statistics import CalibrationStatistics
    from harness.methods import get_method
    from harness.methods.constraints import ExpertConstraints

    mj, v, store = ctx.model(job), ctx.variant(job), ctx.store
    key = v.plan_key
    if not ctx.to_compute("plan", key):
        return False
    with ctx.logged("plan", key, v.label, failures):
        stats = CalibrationStatistics.load(store.dir("calibration", mj.calibration_key))
        constraints = ExpertConstraints.from_arch(get_arch(mj.source.metadata_dir))
        method = get_method(v.method.name, v.method.config)
        plan = method.plan(stats, v.ratio, constraints, calibration_key=mj.calibration_key)
        plan.save(store.dir("plan", key) / "plan.json")
        store.mark_done("plan", key, {"plan_hash": plan.plan_hash(), "job": v.label}, settings=v.plan_settings)
        store.event("computed", stage="plan", key=key, job=v.label)
    kill_point("plan")
    return True
