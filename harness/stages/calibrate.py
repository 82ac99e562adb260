"""Calibration: one model's statistics, once per key, for every method and ratio of the sweep."""

from __future__ import annotations

from harness.grid import Job
from harness.stages import StageContext, kill_point


def run(ctx: StageContext, job: Job, failures: list[str]) -> bool:
    from harness.calibration.run import stored_calibration

    mj, store, cfg = ctx.model(job), ctx.store, ctx.cfg
    key = mj.calibration_key
    if not ctx.to_compute("calibration", key):
        return False
    with ctx.logged("calibration", key, mj.model.name, failures):
        computed, _ = stored_calibration(
            store, mj.source, cfg.calibration, extras=mj.needs, dtype=mj.model.calibration_dtype,
            sequential=cfg.sequential_calibration, batch_size=cfg.calibration_batch_size,
            progress=ctx.progress)
        if computed != key:  # one key function for the grid and the stage: a mismatch is a bug
            raise RuntimeError(f"calibration stored under {computed}, but the grid expects {key}")
        store.event("computed", stage="calibration", key=key, model=mj.model.name)
    kill_point("calibration")
    return True
