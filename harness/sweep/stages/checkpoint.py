"""Checkpoint: a plan applied to the source checkpoint; and the source's own parameter counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.sweep.stages import JobRun


def run(job: JobRun) -> bool:
    from harness.checkpoint import write_checkpoint
    from harness.plan import Plan

    mj, v, store, cfg = job.model, job.variant, job.store, job.cfg
    evicted = store.is_evicted("checkpoint", v.checkpoint_key)

    def make(out: Path) -> dict[str, Any]:
        plan = Plan.load(store.dir("plan", v.plan_key) / "plan.json")
        disk_preflight(plan, mj.source.directory(), out, cfg.materialisation)
        info = write_checkpoint(plan, mj.source.directory(), out / "model", materialisation=cfg.materialisation,
                                recipe_extra={"sweep": cfg.name, "model": mj.model.name, "plan_key": v.plan_key},
                                progress=job.ctx.progress, overwrite=True)
        if evicted:  # written again for a later evaluation (retention: evict_after_eval)
            store.restored("checkpoint", v.checkpoint_key)
            store.event("restored", stage="checkpoint", key=v.checkpoint_key, job=v.label)
        return {"total_params": info.total_params, "activated_params": info.activated_params}

    return job.produce("checkpoint", v.checkpoint_key, v.label, v.checkpoint_settings, make, redo=evicted)


class DiskFullError(RuntimeError):
    """The checkpoint would not fit the free space of its filesystem."""


def disk_preflight(plan, source_dir, out, materialisation: str) -> int:
    """Compare the checkpoint's exact size with the free space where it goes; raises DiskFullError (nothing
    written) when it does not fit. Returns the size."""
    from harness.sweep import preflight
    from harness.sweep.costs import ModelShape, checkpoint_cost, human

    needed = checkpoint_cost(ModelShape.from_dir(source_dir), plan, materialisation).total
    free = preflight.free_bytes(out)
    if needed > free:
        raise DiskFullError(
            f"not enough disk for this checkpoint: it needs {needed} bytes ({human(needed)}), the filesystem of "
            f"{out.parent} has {free} bytes ({human(free)}) free. Nothing was written. Free some space, point "
            f"work_dir at a larger filesystem, or set `checkpoints: evict_after_eval` in the sweep file so each "
            f"checkpoint is deleted once its evaluations are done")
    return needed


def evict_if_evaluated(ctx, mj, v) -> None:
    """Retention `evict_after_eval`: delete a compressed variant's checkpoint (and its dequantised serving copy)
    once every evaluation of the variant is done; the store keeps the done records and records the eviction."""
    store = ctx.store
    if ctx.cfg.checkpoints != "evict_after_eval" or v.method is None:
        return
    if not all(store.is_done("eval", k) for k in v.eval_keys.values()):
        return
    from harness.sweep.store import stage_key

    for stage, key in (("checkpoint", v.checkpoint_key),
                       ("dequantised", stage_key("dequantised", {"model": v.checkpoint_key}))):
        if store.is_available(stage, key):
            with store.claim(stage, key, wait=True):
                store.evict(stage, key, reason="evict_after_eval", job=v.label)


def run_params(job: JobRun) -> bool:
    """The uncompressed model's parameter counts (the baseline's point in the figures)."""
    from harness.checkpoint import count_parameters

    mj = job.model

    def make(out: Path) -> dict[str, Any]:
        total, activated = count_parameters(mj.source.directory())
        return {"total_params": total, "activated_params": activated}

    return job.produce("params", mj.params_key, job.job.label, {"model": mj.identity}, make)
