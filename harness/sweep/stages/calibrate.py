"""Calibration: one model's statistics, once per key, for every method and ratio of the sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.sweep.stages import JobRun


def run(job: JobRun) -> bool:
    from harness.calibration.run import calibrate

    mj, cfg = job.model, job.cfg

    def make(out: Path) -> dict[str, Any]:
        stats = calibrate(mj.source.directory(), cfg.calibration, extras=mj.needs, dtype=mj.model.calibration_dtype,
                          sequential=cfg.sequential_calibration, batch_size=cfg.calibration_batch_size,
                          progress=job.ctx.progress)
        stats.manifest["key"] = mj.calibration_key
        stats.save(out)
        return {"model": mj.source.describe()}

    return job.produce("calibration", mj.calibration_key, mj.model.name, mj.calibration_settings, make)
