"""Checkpoint: a plan applied to the source checkpoint; and the source's own parameter counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.stages import JobRun


def run(job: JobRun) -> bool:
    from harness.checkpoint import write_checkpoint
    from harness.plan import Plan

    mj, v, store, cfg = job.model, job.variant, job.store, job.cfg

    def make(out: Path) -> dict[str, Any]:
        info = write_checkpoint(Plan.load(store.dir("plan", v.plan_key) / "plan.json"), mj.source.directory(),
                                out / "model", materialisation=cfg.materialisation,
                                recipe_extra={"sweep": cfg.name, "model": mj.model.name, "plan_key": v.plan_key},
                                progress=job.ctx.progress, overwrite=True)
        return {"total_params": info.total_params, "activated_params": info.activated_params}

    return job.produce("checkpoint", v.checkpoint_key, v.label, v.checkpoint_settings, make)


def run_params(job: JobRun) -> bool:
    """The uncompressed model's parameter counts (the baseline's point in the figures)."""
    from harness.checkpoint import count_parameters

    mj = job.model

    def make(out: Path) -> dict[str, Any]:
        total, activated = count_parameters(mj.source.directory())
        return {"total_params": total, "activated_params": activated}

    return job.produce("params", mj.params_key, job.job.label, {"model": mj.identity}, make)
