"""The job graph on the local and the Ray executor, and the store as the single source of truth.

- `--executor ray` on a local Ray cluster (two logical GPUs) gives the local executor's table, with two
  variants evaluated at the same time, even when a worker is SIGKILLed mid-evaluation (Ray retries it);
- two drivers on one store compute every stage once;
- a sweep killed while a vLLM server starts leaves no vLLM process once the next run has begun;
- done records carry their settings (`python -m harness.store ls`), and a task's version is part of its key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from harness.sweep.store import Store
from tests.conftest import DATASETS

REPO = Path(__file__).resolve().parents[2]
CALIBRATION = REPO / "tests" / "fixtures" / "calibration" / "code_instruct.jsonl"
SERVING = {"dtype": "float32", "max_model_len": 1024, "startup_timeout_s": 600}
TASKS = [{"name": "gsm8k", "limit": 2}, {"name": "math500", "limit": 1}]


def _sweep(tmp: Path, model: Path, name: str = "graph") -> Path:
    body = {
        "name": name,
        "models": [{"name": "tiny", "path": str(model), "serving": SERVING}],
        "calibration": {"datasets": [{"source": str(CALIBRATION), "prompt_field": "instruction",
                                      "response_field": "output"}], "samples": 8, "length": 64},
        "calibration_batch_size": 4,
        "methods": ["frequency"], "ratios": [0.25, 0.5], "baseline": False,
        "tasks": TASKS,
        "generation": {"max_tokens": 8, "concurrency": 2},
        "data_dir": str(DATASETS), "work_dir": str(tmp / "work"), "results_dir": str(tmp / "results"),
        "plots": False,
    }
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _start(sweep: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    for hook in ("HARNESS_SWEEP_KILL_AT", "HARNESS_SWEEP_KILL_ONCE"):
        if hook not in (env or {}):
            full.pop(hook, None)
    return subprocess.Popen([sys.executable, "-m", "harness.sweep", str(sweep), "--no-progress", *args], cwd=REPO,
                            env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run(sweep: Path, *args: str, env: dict | None = None, timeout: float = 1500) -> tuple[int, str]:
    proc = _start(sweep, *args, env=env)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _table(tmp: Path) -> pd.DataFrame:
    return pd.read_parquet(tmp / "results" / "results.parquet")


def _same_table(a: pd.DataFrame, b: pd.DataFrame) -> None:
    columns = [c for c in a.columns if c != "provenance"]
    pd.testing.assert_frame_equal(a[columns], b[columns])
    for x, y in zip(a["provenance"], b["provenance"], strict=True):
        assert json.loads(x) == json.loads(y)


def _computed(work: Path, stage: str) -> list[str]:
    return [e["key"] for e in Store(work).events("computed") if e["stage"] == stage]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from harness.standins.zoo import build_model

    return build_model("qwen3_moe", tmp_path_factory.mktemp("graph_zoo") / "qwen3_moe")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model) -> Path:
    """The local executor's run, which every other run must reproduce."""
    tmp = tmp_path_factory.mktemp("reference")
    code, out = _run(_sweep(tmp, tiny_model))
    assert code == 0, out[-4000:]
    return tmp


@pytest.fixture
def ray_cluster():
    """A local Ray cluster with two logical GPUs (on this CPU machine), joined by the sweep as a driver."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, object_store_memory=200_000_000,
             log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.mark.timeout(2400)
def test_ray_executor_equals_local_even_when_a_worker_dies(reference, tiny_model, tmp_path, ray_cluster):
    sweep = _sweep(tmp_path, tiny_model)
    kill = {"HARNESS_SWEEP_KILL_AT": "eval:1", "HARNESS_SWEEP_KILL_ONCE": str(tmp_path / "killed-once")}
    code, out = _run(sweep, "--executor", "ray", "--ray-address", ray_cluster, env=kill)
    assert code == 0, out[-4000:]
    assert (tmp_path / "killed-once").exists(), "no worker was killed: the test hook did not fire"
    _same_table(_table(tmp_path), _table(reference))

    work = tmp_path / "work"
    evals = _computed(work, "eval")
    assert len(evals) == len(set(evals)) == 4, "an evaluation was lost or done twice"
    started = [e for e in Store(work).events("job_started") if e["stage"] == "eval"]
    finished = [e for e in Store(work).events("job_finished") if e["stage"] == "eval"]
    assert len(started) == 3 and len(finished) == 2  # the killed worker's job started twice, finished once
    assert len({e["pid"] for e in started}) >= 2
    spans = {}  # the finished runs of each evaluation job
    for e in finished:
        begin = max(s["time"] for s in started if s["job"] == e["job"] and s["time"] <= e["time"])
        spans[e["job"]] = (begin, e["time"])
    (a0, a1), (b0, b1) = spans.values()
    assert a0 < b1 and b0 < a1, "the two variants were not evaluated at the same time"


@pytest.mark.timeout(2400)
def test_two_drivers_on_one_store_compute_each_stage_once(reference, tiny_model, tmp_path):
    sweep = _sweep(tmp_path, tiny_model)
    first, second = _start(sweep), _start(sweep)
    outs = [p.communicate(timeout=1500)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs[0][-3000:] + outs[1][-3000:]
    work = tmp_path / "work"
    for stage, count in (("calibration", 1), ("plan", 2), ("checkpoint", 2), ("eval", 4)):
        keys = _computed(work, stage)
        assert len(keys) == len(set(keys)) == count, (stage, keys)
    workers = {e["pid"] for e in Store(work).events("job_finished") if e["status"] == "done"}
    assert len(workers) == 2, "one driver did all the work: they did not share it"
    _same_table(_table(tmp_path), _table(reference))


def _sweep_processes(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if marker in cmd and "vllm" in cmd:
            found.append(proc)
    return found


@pytest.mark.timeout(1200)
def test_a_sweep_killed_while_its_server_starts_leaves_no_vllm_behind(tiny_model, tmp_path):
    sweep = _sweep(tmp_path, tiny_model, name="startup_kill")
    assert _run(sweep, "--until", "checkpoint")[0] == 0
    driver = _start(sweep)
    records = tmp_path / "work" / "servers"
    deadline = time.monotonic() + 300
    server = None
    while time.monotonic() < deadline and server is None:  # the record is written as the server is spawned
        for path in records.glob("*.json") if records.is_dir() else []:
            server = json.loads(path.read_text())["pid"]
        time.sleep(0.2)
    assert server is not None, "no server record appeared"
    tree: list[psutil.Process] = []
    while time.monotonic() < deadline:  # let vLLM start its engine process: mid start-up, not yet healthy
        try:
            leader = psutil.Process(server)
            tree = [leader, *leader.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        if len(tree) > 1:
            break
        time.sleep(0.2)
    assert tree, "the server was gone before the kill"
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    nxt = _start(sweep, "--until", "checkpoint")  # the next run begins ...
    nxt.communicate(timeout=600)
    deadline = time.monotonic() + 30
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree) and time.monotonic() < deadline:
        time.sleep(0.5)
    alive = [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"vLLM processes of the killed run still run: {alive}"
    assert not _sweep_processes(str(tmp_path / "work" / "checkpoint"))
    assert not list(records.glob("*.json")), "the orphan's record was not cleared"


@pytest.mark.timeout(1800)
def test_done_records_describe_themselves_and_a_task_version_recomputes_that_task(reference, tiny_model,
                                                                                 tmp_path, monkeypatch):
    from harness import store as store_cli
    from harness.sweep.cli import run
    from harness.sweep.config import load_sweep
    from harness.sweep.grid import build_grid
    from harness.tasks.math import GSM8K

    listing = subprocess.run([sys.executable, "-m", "harness.store", "ls", str(reference / "work")], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    for stage in ("calibration", "plan", "checkpoint", "eval"):
        assert any(line.startswith(stage) and " done " in line for line in lines), stage
    rows = [json.loads(line) for line in subprocess.run(
        [sys.executable, "-m", "harness.store", "ls", str(reference / "work"), "--stage", "eval", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=120).stdout.splitlines()]
    assert len(rows) == 4 and {r["settings"]["task"] for r in rows} == {"gsm8k", "math500"}
    from harness.tasks.math import Math500

    assert all(r["settings"]["task_version"] == {"gsm8k": GSM8K.version, "math500": Math500.version}[
        r["settings"]["task"]] for r in rows)
    assert store_cli.main(["ls", str(tmp_path / "nope")]) == 2

    import shutil

    shutil.copytree(reference, tmp_path / "copy")
    sweep = _sweep(tmp_path / "copy", tiny_model)
    monkeypatch.chdir(REPO)
    validated = load_sweep(sweep)
    before = build_grid(validated)
    monkeypatch.setattr(GSM8K, "version", GSM8K.version + ".next")  # its prompt or scorer changed
    after = build_grid(validated)
    for v_before, v_after in zip(before.models[0].variants, after.models[0].variants, strict=True):
        assert v_before.eval_keys["gsm8k"] != v_after.eval_keys["gsm8k"]
        assert v_before.eval_keys["math500"] == v_after.eval_keys["math500"]
    work = tmp_path / "copy" / "work"
    computed = len(Store(work).events("computed"))
    assert run(validated, progress=False) == 0
    new = Store(work).events("computed")[computed:]
    assert sorted(e["job"].split(" / ")[-1] for e in new) == ["gsm8k", "gsm8k"], new
