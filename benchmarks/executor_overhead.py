"""Local vs Ray executor on the tiny sweep, and the executor's own cost per job.

    .venv/bin/python benchmarks/executor_overhead.py [--keep DIR]

1. Wall time of the same tiny sweep (a zoo qwen3_moe; frequency at 25 % and 50 %; gsm8k, 2 samples)
   from an empty store, with `--executor local` and `--executor ray` (a local Ray cluster with two
   logical GPUs, so both variants are evaluated at once).
2. The executor's own overhead per job: the finished sweep's whole graph run again with every job
   already done, so each job only claims its key, reads its done record and journals itself:
   what is left is scheduling + store I/O (ms per job).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
CALIBRATION = REPO / "tests" / "fixtures" / "calibration" / "code_instruct.jsonl"


def _sweep(root: Path, model: Path) -> Path:
    body = {
        "name": "executor_bench",
        "models": [{"name": "tiny", "path": str(model),
                    "serving": {"dtype": "float32", "max_model_len": 1024, "startup_timeout_s": 600}}],
        "calibration": {"datasets": [{"source": str(CALIBRATION), "prompt_field": "instruction",
                                      "response_field": "output"}], "samples": 8, "length": 64},
        "methods": ["frequency"], "ratios": [0.25, 0.5], "baseline": False,
        "tasks": [{"name": "gsm8k", "limit": 2}], "generation": {"max_tokens": 8, "concurrency": 2},
        "data_dir": str(DATASETS), "work_dir": str(root / "work"), "results_dir": str(root / "results"),
        "plots": False,
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.yaml").write_text(yaml.safe_dump(body))
    return root / "sweep.yaml"


def _timed_sweep(sweep: Path, *args: str) -> float:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "harness.sweep", str(sweep), "--no-progress", *args], cwd=REPO,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stdout[-3000:] + done.stderr[-3000:])
    return time.monotonic() - started


def _overhead(sweep: Path, executor: str, address: str | None, repeats: int) -> tuple[int, float]:
    """(jobs, seconds per job) of running the whole graph of a finished sweep again."""
    from harness.sweep.config import load_sweep
    from harness.sweep.executors import get_executor
    from harness.sweep.grid import build_grid, job_graph
    from harness.sweep.stages import StageContext
    from harness.sweep.store import Store

    class NothingDone(Store):  # the graph as a fresh run sees it: every job present
        def is_done(self, stage: str, key: str) -> bool:
            return False

    os.chdir(REPO)
    validated = load_sweep(sweep)
    cfg, grid = validated.cfg, build_grid(validated)
    jobs = job_graph(cfg, grid, NothingDone(cfg.work_path))
    ctx = StageContext(cfg, grid, progress=False)
    options = {"address": address} if executor == "ray" else {}
    runner = get_executor(executor, **options)
    runner.run(jobs, ctx)  # warm-up (Ray: workers started, context shipped)
    started = time.monotonic()
    for _ in range(repeats):  # whole passes: the same key never runs twice at once (it would be "busy")
        graph = runner.run(jobs, ctx)
        assert all(o.status == "cached" for o in graph.outcomes.values()), "a finished job was recomputed"
    elapsed = time.monotonic() - started
    return len(jobs) * repeats, elapsed / (len(jobs) * repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=20, help="copies of the graph in the overhead pass")
    args = parser.parse_args()

    import ray

    from harness.standins.zoo import build_model

    root = args.keep or Path(tempfile.mkdtemp(prefix="executor-bench-"))
    model = build_model("qwen3_moe", root / "model")
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, object_store_memory=200_000_000, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    try:
        local = _sweep(root / "local", model)
        on_ray = _sweep(root / "ray", model)
        t_local = _timed_sweep(local)
        t_ray = _timed_sweep(on_ray, "--executor", "ray", "--ray-address", address)
        n_local, per_local = _overhead(local, "local", None, args.repeats)
        n_ray, per_ray = _overhead(on_ray, "ray", address, args.repeats)
    finally:
        ray.shutdown()
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"tiny sweep (calibration, 2 plans, 2 checkpoints, 2 variants x gsm8k), {os.cpu_count()} CPU cores")
    print(f"  wall time, local executor       {t_local:7.1f} s")
    print(f"  wall time, ray executor         {t_ray:7.1f} s   ({t_local / t_ray:.2f}x)")
    print("executor overhead per job (every job already done: claim + done record + journal + scheduling)")
    print(f"  local                           {1000 * per_local:7.1f} ms  ({n_local} jobs)")
    print(f"  ray                             {1000 * per_ray:7.1f} ms  ({n_ray} jobs)")


if __name__ == "__main__":
    main()
