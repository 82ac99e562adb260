"""Checkpoint: a plan applied to the source checkpoint; and the source's own parameter counts."""

from __future__ import annotations

from harness.grid import Job
from harness.stages import StageContext, kill_point


def run(ctx: StageContext, job: Job, failures: list[str]) -> bool:
    from harness.checkpoint import write_checkpoint
    from harness.plan import Plan

    mj, v, store, cfg = ctx.model(job), ctx.variant(job), ctx.store, ctx.cfg
    key = v.checkpoint_key
    if not ctx.to_compute("checkpoint", key):
        return False
    with ctx.logged("checkpoint", key, v.label, failures):
        info = write_checkpoint(Plan.load(store.dir("plan", v.plan_key) / "plan.json"), mj.source.directory(),
                                store.dir("checkpoint", key) / "model", materialisation=cfg.materialisation,
                                recipe_extra={"sweep": cfg.name, "model": mj.model.name, "plan_key": v.plan_key},
                                progress=ctx.progress, overwrite=True)
        store.mark_done("checkpoint", key, {"total_params": info.total_params,
                                            "activated_params": info.activated_params, "job": v.label},
                        settings=v.checkpoint_settings)
        store.event("computed", stage="checkpoint", key=key, job=v.label)
    kill_point("checkpoint")
    return True


def run_params(ctx: StageContext, job: Job, failures: list[str]) -> bool:
    """The uncompressed model's parameter counts (the baseline's point in the figures)."""
    from harness.checkpoint import count_parameters

    mj, store = ctx.model(job), ctx.store
    if store.is_done("params", mj.params_key):
        return False
    with ctx.logged("params", mj.params_key, job.label, failures):
        total, activated = count_parameters(mj.source.directory())
        store.mark_done("params", mj.params_key, {"total_params": total, "activated_params": activated,
                                                  "job": job.label}, settings={"model": mj.identity})
    return True
