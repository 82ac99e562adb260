"""The stage protocol: a stage is its function and its line in STAGES; run_job and JobRun do the rest
(claim, done-or-forced, log, done record, event, failure record). Proven with a toy stage."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.sweep import stages
from harness.sweep.grid import Job
from harness.sweep.stages import JobRun, StageContext, run_job
from harness.sweep.store import Store

CALLS: list[str] = []


def toy_stage(job: JobRun) -> bool:
    """Writes the job's label reversed; fails when the label says so."""

    def make(out: Path) -> dict:
        CALLS.append(job.job.label)
        if job.job.label == "boom":
            raise ValueError("the toy stage was asked to fail")
        (out / "reversed.txt").write_text(job.job.label[::-1])
        return {"length": len(job.job.label)}

    return job.produce("toy", job.job.key, job.job.label, {"label": job.job.label}, make)


@pytest.fixture
def toy(monkeypatch, tmp_path):
    monkeypatch.setitem(stages.STAGES, "toy", f"{__name__}:toy_stage")
    CALLS.clear()
    ctx = StageContext(SimpleNamespace(work_path=tmp_path / "work"), grid=None, progress=False)
    return ctx, Store(tmp_path / "work")


def test_a_declared_toy_stage_runs_caches_and_records(toy):
    ctx, store = toy
    job = Job(id="toy:a", stage="toy", key="k1", label="hello", model="m")
    first = run_job(ctx, job)
    assert first.status == "done" and not first.failures
    assert (store.dir("toy", "k1") / "reversed.txt").read_text() == "olleh"
    assert store.is_done("toy", "k1") and store.done_meta("toy", "k1")["length"] == 5
    assert [e["stage"] for e in store.events("computed")] == ["toy"]
    assert (store.root / "logs" / "toy-k1.log").is_file()
    again = run_job(ctx, job)
    assert again.status == "cached" and CALLS == ["hello"]  # done: not produced twice


def test_a_failing_stage_is_recorded_with_its_log_and_not_done(toy):
    ctx, store = toy
    outcome = run_job(ctx, Job(id="toy:b", stage="toy", key="k2", label="boom", model="m"))
    assert outcome.status == "failed"
    assert "ValueError: the toy stage was asked to fail" in outcome.failures[0]
    assert not store.is_done("toy", "k2")
    [record] = store.failures()
    assert record["stage"] == "toy" and "asked to fail" in json.dumps(record)
    assert "asked to fail" in Path(record["log"]).read_text()


def test_force_recomputes_a_done_stage(toy):
    ctx, store = toy
    job = Job(id="toy:c", stage="toy", key="k3", label="abc", model="m")
    run_job(ctx, job)
    forced = StageContext(ctx.cfg, grid=None, force=frozenset({"toy"}), progress=False)
    assert run_job(forced, job).status == "done"
    assert CALLS == ["abc", "abc"]
