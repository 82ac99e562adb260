"""The Ray executor: every job a Ray task with the resources it needs, independent jobs at the same time.

    python -m harness.sweep sweeps/glm.yaml --executor ray [--ray-address HOST:PORT]

Joins the cluster at `--ray-address` / `RAY_ADDRESS` / the sweep's `ray.address`, or starts a local
one. Calibration asks for the GPUs the model is served on (`tensor_parallel_size`), a checkpoint
write for one CPU and a memory reservation, a variant's serve + evaluate for its
`tensor_parallel_size` GPUs. On a cluster without GPUs the GPU requests are dropped (said in the
log), so a CPU cluster still runs. A worker lost mid-job leaves no done marker (the store writes it
last) and no claim (an flock dies with its process); Ray retries the task, which redoes exactly
what was not done. Every node must see the work directory (a shared filesystem).
"""

from __future__ import annotations

import logging
import os
import time

from harness.sweep.executors.base import Executor, GraphRun
from harness.sweep.grid import Job
from harness.sweep.stages import Outcome, StageContext, run_job

log = logging.getLogger("harness.sweep")

BUSY_RETRY_S = 3.0
# The driver's environment that the workers need too: Hugging Face cache and offline mode, vLLM settings,
# the harness's own switches (and the judge's key variable, named by the sweep).
FORWARDED_PREFIXES = ("HARNESS_", "HF_", "HUGGING_FACE_", "VLLM_", "TRANSFORMERS_", "TOKENIZERS_")


def forwarded_environment(extra: tuple[str, ...] = ()) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES) or k in extra}


def _remote_job(ctx: StageContext, job: Job) -> Outcome:
    logging.basicConfig(level=logging.INFO)
    return run_job(ctx, job)


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, address: str | None = None, max_retries: int = 3, num_cpus: int | None = None,
                 num_gpus: int | None = None):
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.max_retries = max_retries
        self.num_cpus, self.num_gpus = num_cpus, num_gpus

    def _connect(self, env: dict[str, str]):
        import ray

        if ray.is_initialized():
            return ray
        runtime_env = {"env_vars": env}
        if self.address:
            ray.init(address=self.address, log_to_driver=False, runtime_env=runtime_env)
            log.info("ray: joined the cluster at %s", self.address)
        else:
            ray.init(num_cpus=self.num_cpus, num_gpus=self.num_gpus, include_dashboard=False, log_to_driver=False,
                     runtime_env=runtime_env)
            log.info("ray: started a local cluster (%s)", ray.cluster_resources())
        return ray

    def run(self, jobs: list[Job], ctx: StageContext) -> GraphRun:
        from tqdm.auto import tqdm

        judge_key = (ctx.cfg.judge.api_key_env,) if ctx.cfg.judge and ctx.cfg.judge.api_key_env else ()
        ray = self._connect(forwarded_environment(judge_key))
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        if not has_gpus and any(j.resources.num_gpus for j in jobs):
            log.info("ray: the cluster has no GPUs; jobs run without GPU requests")
        remote = ray.remote(_remote_job)
        ctx_ref = ray.put(ctx)
        graph = GraphRun(jobs)
        in_flight: dict = {}  # object ref -> job
        waiting: list[tuple[float, Job]] = []  # busy jobs and when to submit them again

        def submit(job: Job) -> None:
            r = job.resources
            options = {"num_cpus": r.num_cpus, "num_gpus": r.num_gpus if has_gpus else 0,
                       "max_retries": self.max_retries, "retry_exceptions": False}
            if r.memory_gb:
                options["memory"] = int(r.memory_gb * 2**30)
            in_flight[remote.options(**options).remote(ctx_ref, job)] = job

        with tqdm(total=len(jobs), desc="sweep (ray)", unit="job", disable=not ctx.progress) as bar:
            while not graph.finished:
                now = time.monotonic()
                for due, job in [w for w in waiting if w[0] <= now]:
                    waiting.remove((due, job))
                    graph.finish(job, Outcome(job.id, "busy"))  # back into the queue
                for job in graph.ready():
                    graph.start(job)
                    submit(job)
                if not in_flight:
                    if waiting:
                        time.sleep(max(0.0, min(d for d, _ in waiting) - time.monotonic()))
                    continue
                done, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
                for ref in done:
                    job = in_flight.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 — the task died past its retries: recorded
                        outcome = Outcome(job.id, "failed", [f"{job.stage} {job.label}: lost ({type(exc).__name__}: "
                                                             f"{str(exc).splitlines()[0] if str(exc) else ''})"])
                    if outcome.status == "busy":
                        waiting.append((time.monotonic() + BUSY_RETRY_S, job))
                        continue
                    graph.finish(job, outcome)
                    self.report(graph, job, outcome, bar)
        return graph
