"""`python -m harness.evaluate`: task selection, per-task files, the tidy table, failures and exit codes.

One served tiny model answers and judges. In the CLI run one task is given a bad option
and must fail without stopping the others; the category score in the table must equal
the mean of the task scores read back from the per-task files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.evaluate import expand_tasks, summary_rows
from harness.results.table import read_results, tabulated
from harness.tasks import UnknownTaskError
from harness.tasks.base import SampleRecord, TaskResult
from tests.conftest import DATASETS, REPO
from tests.tasks.test_creative import FIXTURE, SCORE_REGEX


def test_expand_tasks_categories_names_and_errors():
    assert expand_tasks("math") == ["gsm8k", "math500"]
    assert expand_tasks("math, gsm8k ,creative") == ["gsm8k", "math500", "wildbench_creative"]
    assert expand_tasks("coding") == ["humaneval_plus", "mbpp_plus", "livecodebench"]
    assert expand_tasks("creative_writing,arc_easy") == ["wildbench_creative", "arc_easy"]
    with pytest.raises(UnknownTaskError, match="unknown task or category 'maths'.*categories: coding"):
        expand_tasks("math,maths")
    with pytest.raises(UnknownTaskError, match="no tasks"):
        expand_tasks(" , ")


def test_summary_rows_tabulate_fractions_and_category_means():
    def result(task, score, status="ok"):
        return TaskResult(task=task, category="math", status=status, score=score, n_samples=2,
                          metrics={"accuracy": score, "n_extracted": 2.0, "mean_completion_tokens": 30.0}
                          if score is not None else {},
                          samples=[SampleRecord(sample_id="0", prompt="p", output="o", score=1.0)])

    rows = summary_rows([result("gsm8k", 0.5), result("math500", 0.25), result("x", None, "not_run")], model="m")
    # The same rows the sweep writes: every fraction metric, the task's category contribution ("score"), the
    # failure kinds of its samples (the reply "o" has no extractable answer; without a finish reason truncation is
    # unknown, so no row), then the category mean; counts and raw means stay out.
    kinds = [("failure_rate:any", 1.0), ("failure_rate:degenerate", 0.0), ("failure_rate:empty", 0.0),
             ("failure_rate:no_answer", 1.0)]
    assert [(r["task"], r["metric"], r["value"]) for r in rows] == [
        ("gsm8k", "accuracy", 0.5), *[("gsm8k", *k) for k in kinds], ("gsm8k", "score", 0.5),
        ("math500", "accuracy", 0.25), *[("math500", *k) for k in kinds], ("math500", "score", 0.25),
        ("math", "accuracy", 0.375)]
    assert rows[-1]["provenance"]["missing"] == ["x"]
    assert not tabulated("n_judge_unparseable", 1.0) and not tabulated("truncated_fraction", 1.5)


@pytest.fixture(scope="module")
def served(served_tiny):
    return served_tiny.base_url, served_tiny.model_dir


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "harness.evaluate", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600)


def test_cli_runs_tasks_records_failures_and_writes_table(served, tmp_path):
    base_url, model_dir = served
    out = tmp_path / "out"
    options = {"gsm8k": {"no_such_option": 1},
               "wildbench_creative": {"data_file": str(FIXTURE), "judge_max_tokens": 64,
                                      "judge_extra_body": {"structured_outputs": {"regex": SCORE_REGEX}}}}
    proc = _cli("--base-url", base_url, "--model", "tiny", "--tasks", "math,creative", "--limit", "2",
                "--out", str(out), "--data-dir", str(DATASETS), "--tokenizer", str(model_dir),
                "--judge-base-url", base_url, "--judge-model", "tiny", "--max-tokens", "24",
                "--task-options", json.dumps(options), "--label", "tiny-qwen3", "--quiet")
    assert proc.returncode == 1, proc.stderr[-3000:]  # gsm8k failed, the others ran

    gsm8k = json.loads((out / "gsm8k" / "result.json").read_text())
    assert gsm8k["status"] == "not_run" and "no_such_option" in gsm8k["provenance"]["error"]
    assert "FAILED" in proc.stdout and "gsm8k" in proc.stdout

    scores = {}
    for task in ("math500", "wildbench_creative"):
        summary = json.loads((out / task / "result.json").read_text())
        samples = [json.loads(line) for line in (out / task / "samples.jsonl").read_text().splitlines()]
        assert summary["status"] == "ok" and "samples" not in summary and summary["n_samples"] == len(samples)
        assert summary["provenance"]["generation"]["max_tokens"] == 24
        assert summary["provenance"]["generation"]["chat_template_kwargs"] == {"enable_thinking": False}
        assert summary["provenance"]["chat_template_sha256"] and summary["provenance"]["limit"] == 2
        assert summary["score"] == pytest.approx(sum(s["score"] for s in samples) / len(samples))
        scores[task] = summary["score"]
    assert len(samples) == 2 and all(s["judge_parsed"] for s in samples)

    table = read_results(out / "results.csv")
    assert set(table["model"]) == {"tiny-qwen3"} and set(table["method"]) == {"baseline"}
    value = {(r.task, r.metric): r.value for r in table.itertuples()}
    assert value[("math500", "accuracy")] == pytest.approx(scores["math500"], abs=1e-6)
    assert value[("wildbench_creative", "rescaled_score")] == pytest.approx(scores["wildbench_creative"], abs=1e-6)
    assert value[("math", "accuracy")] == pytest.approx(scores["math500"], abs=1e-6)  # gsm8k missing
    assert value[("creative_writing", "accuracy")] == pytest.approx(scores["wildbench_creative"], abs=1e-6)
    math_row = table[table["task"] == "math"].iloc[0]
    assert json.loads(math_row["provenance"])["missing"] == ["gsm8k"]
    assert not any(t == "gsm8k" for t, _ in value)


def test_cli_rejects_unknown_tasks_without_running(tmp_path):
    proc = _cli("--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--tasks", "nonsense", "--out",
                str(tmp_path))
    assert proc.returncode == 2 and "unknown task or category 'nonsense'" in proc.stderr
    assert not list(tmp_path.iterdir())
