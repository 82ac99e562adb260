"""Serve one variant with vLLM and run every task it still lacks.

The first request is the sanity gate (vLLM loaded the checkpoint and answers). Each task's
result is stored under its own evaluation key, samples first and the done record last, so a
job killed half-way keeps the tasks it finished and redoes only the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from harness.grid import Job, ModelJobs, Variant
from harness.stages import StageContext, StageFailed, kill_point
from harness.store import Store, stage_key, write_json


def _model_dir(ctx: StageContext, mj: ModelJobs, v: Variant, failures: list[str]) -> Path | None:
    store = ctx.store
    if v.method is None:
        with contextlib.suppress(StageFailed), ctx.logged("source", v.variant_id, v.label, failures):
            return mj.source.directory()
        return None
    if store.is_done("checkpoint", v.checkpoint_key):
        return store.dir("checkpoint", v.checkpoint_key) / "model"
    failures.append(f"eval {v.label}: skipped (no checkpoint)")
    return None


def _dequantised(ctx: StageContext, mj: ModelJobs, v: Variant, model_dir: Path) -> Path:
    """A dequantised copy of a quantised checkpoint, stored once (serving.dequantise)."""
    from harness.archs import read_config
    from harness.quantisation import dequantised_copy, detect_format

    if not detect_format(read_config(model_dir)).is_quantised:
        return model_dir
    store = ctx.store
    of = v.checkpoint_key or mj.source_key
    key = stage_key("dequantised", {"model": of})
    out = store.dir("dequantised", key) / "model"
    with store.claim("dequantised", key, wait=True):
        if not store.is_done("dequantised", key):
            dequantised_copy(model_dir, out)
            store.mark_done("dequantised", key, {"job": v.label}, settings={"model": of})
    return out


def run(ctx: StageContext, job: Job, failures: list[str]) -> bool:
    from harness.servers import ServerRecords
    from harness.serving import VLLMServer, complete
    from harness.tasks.base import Endpoint

    mj, v, store = ctx.model(job), ctx.variant(job), ctx.store
    missing = [t for t in ctx.grid.tasks if "eval" in ctx.force or not store.is_done("eval", v.eval_keys[t.name])]
    if not missing:
        return False
    model_dir = _model_dir(ctx, mj, v, failures)
    if model_dir is None:
        return True
    serving = mj.model.serving
    if serving.dequantise:
        try:
            with ctx.logged("dequantise", v.variant_id, v.label, failures):
                model_dir = _dequantised(ctx, mj, v, model_dir)
        except StageFailed:
            return True
    records = ServerRecords(store.root)
    records.reap_orphans()  # a server a killed worker or run left behind holds the memory this one needs
    server_log = store.root / "logs" / f"vllm-{v.variant_id}.log"
    name = f"{mj.model.slug}-{v.method_name}-{v.ratio:g}"
    record = f"{v.variant_id}-{os.getpid()}"

    def spawned(pid: int) -> None:
        records.record(record, pid, model=str(model_dir))
        kill_point("serve")

    server = VLLMServer(model_dir, served_model_name=name, dtype=serving.dtype, max_model_len=serving.max_model_len,
                        tensor_parallel_size=serving.tensor_parallel_size, extra_args=serving.extra_args,
                        env=serving.env, log_path=server_log, startup_timeout_s=serving.startup_timeout_s,
                        on_spawn=spawned)
    server_key = stage_key("serve", {"variant": v.variant_id})
    try:
        with ctx.logged("serve", server_key, v.label, failures):
            server.start()
            reply = complete(server.base_url, name, "The capital of France is", max_tokens=4)
            if not reply.get("choices") or reply.get("usage", {}).get("completion_tokens", 0) < 1:
                raise RuntimeError(f"sanity prompt got no completion: {reply}")
    except StageFailed:
        server.stop()
        records.remove(record)
        for spec in missing:  # every task of this variant is lost with its server
            store.record_failure("eval", v.eval_keys[spec.name], f"{v.label} / {spec.name}",
                                 RuntimeError(f"not run: the server failed to start (log: {server_log})"), server_log)
        return True
    try:
        endpoint = Endpoint(base_url=server.base_url, model=name, tokenizer=str(model_dir))
        for spec in missing:
            _run_task(ctx, store, v, spec, server, server_log, endpoint, failures, mj)
    finally:
        server.stop()
        records.remove(record)
    return True


def _run_task(ctx: StageContext, store: Store, v: Variant, spec, server, server_log: Path, endpoint,
              failures: list[str], mj: ModelJobs) -> None:
    from harness.evaluate import failed, run_task
    from harness.tasks import get_task_class
    from harness.tasks.base import TaskContext, TaskError

    key = v.eval_keys[spec.name]
    label = f"{v.label} / {spec.name}"
    with store.claim("eval", key) as claimed:
        if not claimed:  # another driver evaluates this very task right now
            return
        if not ctx.to_compute("eval", key):
            return
        with contextlib.suppress(StageFailed), ctx.logged("eval", key, label, failures):
            if not server.alive():
                raise RuntimeError(f"the vLLM server died (log: {server_log})")
            judge = ctx.judge_endpoint() if get_task_class(spec.name).needs_judge else None
            tctx = TaskContext(endpoint=endpoint, generation=ctx.cfg.task_generation(spec, mj.model),
                               limit=spec.limit, data_dir=ctx.cfg.data_path,
                               # shared by every variant: evalplus ground truth, lm-eval data caches
                               work_dir=store.root / "task_cache" / spec.name, judge=judge, progress=ctx.progress)
            result = run_task(spec.name, tctx, spec.options)  # the readiness check and run of harness.evaluate
            if failed(result):
                if result.provenance.get("traceback"):
                    logging.getLogger("harness.sweep").error("%s", result.provenance["traceback"])
                raise TaskError(f"{spec.name}: {result.reason}")
            save_result(store.dir("eval", key), result)
            store.mark_done("eval", key, {"job": label}, settings=v.eval_settings[spec.name])
            store.event("computed", stage="eval", key=key, job=label)
            kill_point("eval")


def save_result(out: Path, result) -> None:
    """Samples first, then the result: the result file marks the pair complete. Secrets are redacted."""
    from harness.atomic import atomic_write
    from harness.redaction import redact

    lines = "".join(redact(s.model_dump_json()) + "\n" for s in result.samples)
    atomic_write(out / "samples.jsonl", lambda p: Path(p).write_text(lines))
    write_json(out / "result.json", result.model_dump(mode="json", exclude={"samples"}))
