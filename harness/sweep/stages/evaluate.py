"""Serve one variant with vLLM and run every task it still lacks.

The first request is the sanity gate (vLLM loaded the checkpoint and answers). Each task's
result is stored under its own evaluation key, samples first and the done record last, so a
job killed half-way keeps the tasks it finished and redoes only the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.sweep.stages import JobRun, StageFailed, kill_point
from harness.sweep.store import stage_key

SANITY_PROMPT = "The capital of France is"


def _model_dir(job: JobRun) -> Path | None:
    """The checkpoint to serve: the source for the baseline, the written checkpoint otherwise."""
    mj, v, store = job.model, job.variant, job.store
    if v.method is None:
        with contextlib.suppress(StageFailed), job.logged("source", v.variant_id, v.label):
            return mj.source.directory()
        return None
    if store.is_available("checkpoint", v.checkpoint_key):
        return store.dir("checkpoint", v.checkpoint_key) / "model"
    why = "evicted" if store.is_evicted("checkpoint", v.checkpoint_key) else "no checkpoint"
    job.fail(f"eval {v.label}: skipped ({why})")
    return None


def dequantised(job: JobRun, model_dir: Path) -> Path:
    """A dequantised copy of a quantised checkpoint (for a vLLM that cannot serve its format), stored
    once per checkpoint under the "dequantised" stage, shared by concurrent jobs."""
    from harness.archs import read_config
    from harness.checkpoint.quantisation import dequantised_copy, detect_format

    if not detect_format(read_config(model_dir)).is_quantised:
        return model_dir
    store, v = job.store, job.variant
    of = v.checkpoint_key or job.model.source_key
    key = stage_key("dequantised", {"model": of})
    out = store.dir("dequantised", key) / "model"
    with store.claim("dequantised", key, wait=True):
        if not store.is_available("dequantised", key):
            dequantised_copy(model_dir, out)
            store.restored("dequantised", key)
            store.mark_done("dequantised", key, {"job": v.label}, settings={"model": of})
    return out


@dataclass
class Served:
    """A started, recorded and sanity-checked server of one variant, and how to reach it."""

    server: Any
    log_path: Path
    endpoint: Any


@contextlib.contextmanager
def served(job: JobRun, model_dir: Path):
    """Start the variant's server (recorded so no server outlives its owner), check it answers, stop it
    after; yields None when it failed to start (recorded under the serve stage)."""
    from harness.serving.records import ServerRecords
    from harness.serving.vllm import VLLMServer, complete
    from harness.tasks.base import Endpoint

    mj, v, store = job.model, job.variant, job.store
    serving = mj.model.serving
    records = ServerRecords(store.root)
    records.reap_orphans()  # a server a killed worker or run left behind holds the memory this one needs
    log_path = store.root / "logs" / f"vllm-{v.variant_id}.log"
    name = f"{mj.model.slug}-{v.method_name}-{v.ratio:g}"
    record = f"{v.variant_id}-{os.getpid()}"

    def spawned(pid: int) -> None:
        records.record(record, pid, model=str(model_dir))
        kill_point("serve")

    server = VLLMServer(model_dir, served_model_name=name, dtype=serving.dtype, max_model_len=serving.max_model_len,
                        tensor_parallel_size=serving.tensor_parallel_size, extra_args=serving.extra_args,
                        env=serving.env, log_path=log_path, startup_timeout_s=serving.startup_timeout_s,
                        on_spawn=spawned)
    try:
        try:
            with job.logged("serve", stage_key("serve", {"variant": v.variant_id}), v.label):
                server.start()
                reply = complete(server.base_url, name, SANITY_PROMPT, max_tokens=4)
                if not reply.get("choices") or reply.get("usage", {}).get("completion_tokens", 0) < 1:
                    raise RuntimeError(f"sanity prompt got no completion: {reply}")
        except StageFailed:
            yield None
            return
        yield Served(server, log_path, Endpoint(base_url=server.base_url, model=name, tokenizer=str(model_dir)))
    finally:
        server.stop()
        records.remove(record)


def run(job: JobRun) -> bool:
    v, store = job.variant, job.store
    forced = "eval" in job.ctx.force
    missing = [t for t in job.ctx.grid.tasks if forced or not store.is_done("eval", v.eval_keys[t.name])]
    if not missing:
        return False
    model_dir = _model_dir(job)
    if model_dir is None:
        return True
    if job.model.model.serving.dequantise:
        with job.logged("dequantise", v.variant_id, v.label):
            model_dir = dequantised(job, model_dir)
    with served(job, model_dir) as server:
        if server is None:
            for spec in missing:  # every task of this variant is lost with its server
                store.record_failure("eval", v.eval_keys[spec.name], f"{v.label} / {spec.name}",
                                     RuntimeError("not run: the server failed to start"), None)
            return True
        for spec in missing:
            with contextlib.suppress(StageFailed):
                _evaluate_task(job, spec, server)
    from harness.sweep.stages.checkpoint import evict_if_evaluated

    evict_if_evaluated(job.ctx, job.model, v)
    return True


def _evaluate_task(job: JobRun, spec, server: Served) -> None:
    """One task of the variant under its own claim and key; a failure is recorded and the next task runs."""
    from harness.tasks import get_task_class
    from harness.tasks.base import TaskContext, TaskError
    from harness.tasks.runner import failed, run_task, write_task_result

    v, store, cfg = job.variant, job.store, job.cfg
    key = v.eval_keys[spec.name]
    with store.claim("eval", key) as claimed:
        if not claimed:  # another driver evaluates this very task right now
            return

        def make(out: Path) -> dict[str, Any]:
            if not server.server.alive():
                raise RuntimeError(f"the vLLM server died (log: {server.log_path})")
            judge = job.ctx.judge_endpoint() if get_task_class(spec.name).needs_judge else None
            tctx = TaskContext(endpoint=server.endpoint, generation=cfg.task_generation(spec, job.model.model),
                               limit=spec.limit, data_dir=cfg.data_path,
                               # shared by every variant: evalplus ground truth, lm-eval data caches
                               work_dir=store.root / "task_cache" / spec.name, judge=judge, progress=job.ctx.progress)
            result = run_task(spec.name, tctx, spec.options)  # the readiness check and run, as harness.evaluate
            if failed(result):
                if result.provenance.get("traceback"):
                    logging.getLogger("harness.sweep").error("%s", result.provenance["traceback"])
                raise TaskError(f"{spec.name}: {result.reason}")
            write_task_result(result, out)
            return {}

        job.produce("eval", key, f"{v.label} / {spec.name}", v.eval_settings[spec.name], make)
