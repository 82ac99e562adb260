"""Secrets stay out of everything the harness writes.

Unit checks of `harness.util.redaction`, of the store and table writers, and one tiny sweep
(one vLLM server: the zoo model as the baseline, a sandboxed coding task, EvalPlus and a
judged task whose judge needs an API key) run with fake keys planted in its environment:
no file under its work and results directories (parquet cells included) and nothing it
printed may hold one of them.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.util.redaction import REDACTED, RedactingFormatter, is_secret_name, redact, remember, secret_values
from tests.conftest import DATASETS

REPO = Path(__file__).resolve().parents[2]
CALIBRATION = REPO / "tests" / "fixtures" / "calibration" / "code_instruct.jsonl"
PLANTED = {"HARNESS_TEST_FAKE_KEY": "sk-harness-fake-judge-key-7f3a9c",
           "OPENAI_API_KEY": "sk-openai-fake-1d2e3f4a5b6c",
           "HF_TOKEN": "hf_fakeTokenForTheSecretTest0123"}


def test_secret_names():
    for name in ("HF_TOKEN", "OPENAI_API_KEY", "judge_key", "AWS_SECRET", "DB_PASSWORD", "TOKEN"):
        assert is_secret_name(name), name
    for name in ("PATH", "KEYBOARD", "TOKENIZERS_PARALLELISM", "HOME", "MONKEY"):
        assert not is_secret_name(name), name


def test_values_from_the_environment_and_remembered_keys(monkeypatch):
    monkeypatch.setenv("HARNESS_TEST_TOKEN", "tok-1234567890")
    monkeypatch.setenv("HARNESS_TEST_KEY", "short")  # too short to be a key, too likely to occur by chance
    remember("judge-credential-abcdef")
    known = secret_values()
    assert {"tok-1234567890", "judge-credential-abcdef"} <= known and "short" not in known


def test_redact_nested_values_json_text_and_log_records(monkeypatch):
    monkeypatch.setenv("HARNESS_TEST_TOKEN", "tok-1234567890")
    monkeypatch.setenv("HARNESS_TEST_LONGER_TOKEN", "tok-1234567890-and-more")
    monkeypatch.setenv("HARNESS_TEST_QUOTED_KEY", 'key-with-"quote"-and-é')
    data = {"a": ["x tok-1234567890 y", ("tok-1234567890-and-more",)], "tok-1234567890": 3, "n": 1.5}
    assert redact(data) == {"a": [f"x {REDACTED} y", (REDACTED,)], REDACTED: 3, "n": 1.5}
    text = redact(json.dumps({"quoted": 'see key-with-"quote"-and-é', "plain": "tok-1234567890"}))
    assert json.loads(text) == {"quoted": f"see {REDACTED}", "plain": REDACTED}
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "key %s", ("tok-1234567890",), None)
    assert RedactingFormatter("%(message)s").format(record) == f"key {REDACTED}"


def _files_holding(roots: list[Path], secrets: list[str]) -> dict[str, list[str]]:
    """Every file under `roots` whose bytes, or (parquet) decoded cells, contain one of `secrets`."""
    found: dict[str, list[str]] = {}
    for root in roots:
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            texts = [path.read_bytes().decode("utf-8", "replace")]
            if path.suffix == ".parquet":
                texts.append(pd.read_parquet(path).to_json())
            hits = [s for s in secrets if any(s in t for t in texts)]
            if hits:
                found[str(path)] = hits
    return found


def test_the_store_and_the_tables_redact(tmp_path, monkeypatch):
    from harness.results.table import write_samples
    from harness.sweep.store import Store, write_json

    secret = PLANTED["HARNESS_TEST_FAKE_KEY"]
    monkeypatch.setenv("HARNESS_TEST_FAKE_KEY", secret)
    store = Store(tmp_path / "work")
    write_json(tmp_path / "work" / "x.json", {"note": f"key={secret}"})
    store.event("computed", stage="eval", key="k", detail=secret)
    store.record_failure("eval", "k", "job", RuntimeError(f"server said {secret}"), None)
    table = pd.DataFrame([{"model": "m", "method": "baseline", "ratio": 0.0, "task": "t", "category": "coding",
                           "sample_id": secret, "score": 1.0}])
    write_samples(table, tmp_path / "results" / "samples.parquet")
    assert not _files_holding([tmp_path], [secret])
    # the search itself finds a secret in a parquet cell
    table.to_parquet(tmp_path / "planted.parquet")
    assert list(_files_holding([tmp_path], [secret])) == [str(tmp_path / "planted.parquet")]


@pytest.mark.timeout(1800)
def test_a_sweep_writes_no_secret(tmp_path, monkeypatch):
    """Fake keys in the environment; the judge needs one of them; none may reach logs, provenance or tables."""
    from harness.standins.zoo import build_model
    from harness.tasks import rubric_judge

    seen_keys: list[str | None] = []
    answer = rubric_judge._Handler.do_POST

    def recording_post(handler):
        seen_keys.append(handler.headers.get("Authorization"))
        answer(handler)

    monkeypatch.setattr(rubric_judge._Handler, "do_POST", recording_post)
    model = build_model("qwen3_moe", tmp_path / "zoo" / "qwen3_moe")
    with rubric_judge.RubricJudge() as judge:
        body = {
            "name": "secrets", "models": [{"name": "tiny", "path": str(model),
                                           "serving": {"dtype": "float32", "max_model_len": 1024,
                                                       "startup_timeout_s": 600}}],
            "calibration": {"datasets": [{"source": str(CALIBRATION), "prompt_field": "instruction",
                                          "response_field": "output"}], "samples": 8, "length": 64},
            "baseline": True, "methods": [], "ratios": [],
            "tasks": [{"name": "toy_coding", "limit": 2}, {"name": "humaneval_plus", "limit": 1},
                      {"name": "toy_creative", "limit": 2}],
            "generation": {"max_tokens": 24, "concurrency": 1},
            "judge": {"base_url": judge.base_url, "model": rubric_judge.MODEL_NAME,
                      "api_key_env": "HARNESS_TEST_FAKE_KEY"},
            "data_dir": str(DATASETS), "work_dir": str(tmp_path / "work"),
            "results_dir": str(tmp_path / "results"), "plots": False,
        }
        sweep = tmp_path / "secrets.yaml"
        sweep.write_text(yaml.safe_dump(body, sort_keys=False))
        env = {**os.environ, **PLANTED, "PYTHONUNBUFFERED": "1"}
        env.pop("HARNESS_SWEEP_KILL_AT", None)
        done = subprocess.run([sys.executable, "-m", "harness.sweep", str(sweep), "--no-progress"], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert seen_keys and all(k == f"Bearer {PLANTED['HARNESS_TEST_FAKE_KEY']}" for k in seen_keys), \
        "the judge must have been sent the planted key (else this test proves nothing)"
    samples = pd.read_parquet(tmp_path / "results" / "samples.parquet")
    assert set(samples["task"]) == {"toy_coding", "humaneval_plus", "toy_creative"}
    assert list((tmp_path / "work" / "logs").glob("vllm-*.log")), "the server log is among the files searched"
    assert not _files_holding([tmp_path / "work", tmp_path / "results"], list(PLANTED.values()))
    printed = done.stdout + done.stderr
    assert not [s for s in PLANTED.values() if s in printed]
