"""Sweep files are validated as a whole before any work: every problem listed at once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from harness.sweep.cli import main
from harness.sweep.config import SweepConfig, SweepConfigError, load_sweep, read_sweep_file

REPO = Path(__file__).resolve().parents[2]
SEED_SWEEPS = sorted(p for p in (REPO / "sweeps").glob("*.yaml") if p.stem != "tiny")


def _write(tmp_path: Path, body: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.fixture(scope="module")
def grouped_glm(tmp_path_factory) -> Path:
    from harness.standins.zoo import build_model

    return build_model("glm4_moe_grouped", tmp_path_factory.mktemp("zoo") / "glm_grouped")


def test_invalid_config_lists_every_problem(tmp_path, grouped_glm):
    body = {
        "name": "broken",
        "models": [
            {"name": "hub-model", "path": "someorg/some-moe", "family": "not_a_family"},
            {"name": "uncached", "path": "someorg/other-moe", "family": "qwen3_moe"},
            {"name": "grouped", "path": str(grouped_glm)},
        ],
        "calibration": {"datasets": [{"source": "theblackcat102/evol-codealpaca-v1",
                                      "prompt_field": "instruction", "response_field": "output"}],
                        "samples": 8, "length": 64},
        "methods": ["reap", "no_such_method", {"name": "random", "config": {"bogus_option": 1}}],
        "ratios": [0.3, 1.5],
        "tasks": ["gsm8k", "no_such_task", "wildbench_creative"],
        "data_dir": str(tmp_path / "empty_data"),
    }
    (tmp_path / "empty_data").mkdir()
    with pytest.raises(SweepConfigError) as info:
        load_sweep(_write(tmp_path, body))
    text = str(info.value)
    expected = [
        "ratios: 1.5 is outside (0, 1)",
        "unknown method 'no_such_method'",
        "bogus_option",
        "unknown family 'not_a_family'",
        "uncached): hub model someorg/other-moe (revision main) is not",
        "grouped): ratio 0.3",  # 16 experts in 4 groups: 0.3 keeps 11, not divisible by 4
        "unknown task 'no_such_task'",
        "missing data file",
        "needs a `judge:` section",
    ]
    for needle in expected:
        assert needle in text, f"{needle!r} not reported in:\n{text}"
    assert len(info.value.problems) >= len(expected)


def test_schema_errors_are_listed_together(tmp_path):
    path = _write(tmp_path, {"name": "bad name!", "models": [], "tasks": [], "calibration": {"samples": 0}})
    with pytest.raises(SweepConfigError) as info:
        load_sweep(path)
    assert len(info.value.problems) >= 3
    assert any(p.startswith("models") for p in info.value.problems)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SweepConfigError, match="file not found"):
        load_sweep(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed\n")
    with pytest.raises(SweepConfigError, match="not valid YAML"):
        load_sweep(bad)


@pytest.mark.parametrize("sweep", SEED_SWEEPS, ids=lambda p: p.stem)
def test_seed_sweeps_name_an_uncached_hub_model_clearly(sweep, capsys, monkeypatch, tmp_path):
    """Offline with an empty Hugging Face cache, a seed sweep stops in validation and says what to do
    (the rehearsal, tests/sweep/test_rehearsal.py, is how they are exercised here)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.chdir(REPO)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    assert main([str(sweep), "--dry-run", "--no-progress"]) == 2
    err = capsys.readouterr().err
    raw = read_sweep_file(sweep)
    for model in raw["models"]:
        assert f"({model['name']}): hub model {model['path']} (revision main) is not in the Hugging Face cache" in err
    assert "hf download" in err and "HF_HUB_OFFLINE" in err


def test_seed_sweeps_cover_the_paper_models():
    configs = {p.stem: SweepConfig(**read_sweep_file(p)) for p in SEED_SWEEPS}  # the schema; hub ids unresolved
    # ... and calibrate as the paper's code packs its samples.
    assert {stem: cfg.calibration.packing for stem, cfg in configs.items()} == dict.fromkeys(configs, "reap_repo")
    names = {cfg.models[0].name for cfg in configs.values()}
    assert {"ERNIE-4.5-21B-A3B", "Qwen3-30B-A3B", "Mixtral-8x7B-Instruct-v0.1", "Llama-4-Scout-17B-16E-Instruct",
            "GLM-4.5-Air", "Qwen3-Coder-480B-A35B-Instruct-FP8", "Kimi-K2-Instruct-W4A16"} <= names


def test_a_ratio_that_removes_nothing_and_too_little_calibration_data_fail_before_any_work(tmp_path, grouped_glm,
                                                                                          capsys):
    """The ratio fails validation; the calibration data's check (it tokenizes) is the preflight's, before any work."""
    data = tmp_path / "three.jsonl"
    data.write_text("".join(f'{{"instruction": "q{i}", "output": "a{i}"}}\n' for i in range(3)))
    body = {
        "name": "noop",
        "models": [{"name": "grouped", "path": str(grouped_glm)}],
        "calibration": {"datasets": [{"source": str(data)}], "samples": 8, "length": 16, "packing": "pad"},
        "methods": ["frequency"],
        "ratios": [0.01, 0.5],
        "tasks": ["gsm8k"],
        "work_dir": str(tmp_path / "work"),
        "results_dir": str(tmp_path / "results"),
    }
    with pytest.raises(SweepConfigError) as info:
        load_sweep(_write(tmp_path, body))
    text = str(info.value)
    assert "ratio 0.01 keeps round(16 * (1 - 0.01)) = 16 of 16 experts per layer: it removes none" in text
    assert "ratio 0.5" not in text
    body["ratios"] = [0.5]
    for run in (["--dry-run"], []):
        assert main([str(_write(tmp_path, body)), "--no-progress", *run]) == 2
        err = capsys.readouterr().err
        assert "problem(s) found before any work" in err
        assert "models[0] (grouped): calibration: " in err and "only 3 non-empty records, but 8 rows are needed" in err
    assert not (tmp_path / "work" / "calibration").exists() or not any((tmp_path / "work" / "calibration").iterdir())
    # Concatenated packing needs tokens, not records: 3 short records cannot fill 8 x 16 tokens either.
    body["calibration"]["packing"] = "concat"
    assert main([str(_write(tmp_path, body)), "--dry-run", "--no-progress"]) == 2
    assert re.search(r"3 records give \d+ tokens, but 8 rows x 16 tokens = 128", capsys.readouterr().err)


def test_the_calibration_data_check_runs_only_for_a_calibration_still_to_do(tmp_path, grouped_glm, monkeypatch,
                                                                             capsys):
    """Issue 26, validation stays light: once the calibration is stored, neither a dry run nor a re-run loads the
    tokenizer to check its data; `--force calibration` (the stage to do again) checks it."""
    import harness.sweep.config

    calls: list[str] = []
    real = harness.sweep.config._calibration_data_problems

    def counting(cfg, source):
        calls.append(str(source.metadata_dir))
        return real(cfg, source)

    monkeypatch.setattr(harness.sweep.config, "_calibration_data_problems", counting)
    path = _write(tmp_path, _small_sweep(tmp_path, grouped_glm))
    assert main([str(path), "--dry-run", "--no-progress"]) == 0
    assert len(calls) == 1, "a dry run with the calibration to do checks its data"
    assert main([str(path), "--no-progress", "--until", "calibration"]) == 0
    assert len(calls) == 2
    assert any((tmp_path / "work" / "calibration").iterdir())
    for run in (["--dry-run"], ["--until", "calibration"], ["--until", "plan"]):
        assert main([str(path), "--no-progress", *run]) == 0, capsys.readouterr().err
    assert len(calls) == 2, "the calibration is stored: its data was checked again"
    assert main([str(path), "--dry-run", "--no-progress", "--force", "calibration"]) == 0
    assert len(calls) == 3


# -- the three bad inputs of issue 26 and the judge preflight ------------------------------------------
def _small_sweep(tmp_path: Path, model: Path, **overrides) -> dict:
    body = {
        "name": "small",
        "models": [{"name": "grouped", "path": str(model)}],
        "calibration": {"datasets": [{"source": str(REPO / "tests" / "fixtures" / "calibration" /
                                                    "code_instruct.jsonl"),
                                      "prompt_field": "instruction", "response_field": "output"}],
                        "samples": 4, "length": 32},
        "methods": ["frequency"],
        "ratios": [0.5],
        "tasks": ["toy_math"],
        "work_dir": str(tmp_path / "work"),
        "results_dir": str(tmp_path / "results"),
    }
    body.update(overrides)
    return body


def test_directories_that_cannot_be_created_are_named(tmp_path, grouped_glm):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    body = _small_sweep(tmp_path, grouped_glm, work_dir=str(blocker / "work"), results_dir=str(blocker / "res"))
    with pytest.raises(SweepConfigError) as info:
        load_sweep(_write(tmp_path, body))
    text = str(info.value)
    assert f"work_dir: cannot create {blocker / 'work'}: {blocker} exists and is not a directory" in text
    assert f"results_dir: cannot create {blocker / 'res'}" in text
    assert not (tmp_path / "work").exists()
    # A writable parent is fine: nothing is created by validation.
    sweep = load_sweep(_write(tmp_path, _small_sweep(tmp_path, grouped_glm, work_dir=str(tmp_path / "new" / "w"))))
    assert sweep.cfg.work_path == tmp_path / "new" / "w" and not (tmp_path / "new").exists()


def test_read_only_filesystem_is_named(tmp_path, grouped_glm, monkeypatch):
    """os.access says what the kernel would (EROFS for a read-only mount, even for root)."""
    import os

    real = os.access
    readonly = tmp_path / "ro"
    readonly.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == readonly else real(p, mode, **kw))
    body = _small_sweep(tmp_path, grouped_glm, work_dir=str(readonly / "work"))
    with pytest.raises(SweepConfigError, match=rf"work_dir: cannot create {readonly / 'work'}: {readonly} is not "
                                               "writable"):
        load_sweep(_write(tmp_path, body))


def test_duplicates_in_lists_are_rejected(tmp_path, grouped_glm):
    body = _small_sweep(tmp_path, grouped_glm, ratios=[0.5, 0.5, 0.25], methods=["frequency", "frequency"],
                        tasks=["gsm8k", "math", "toy_math", "toy_math"],
                        models=[{"name": "grouped", "path": str(grouped_glm)}] * 2)
    with pytest.raises(SweepConfigError) as info:
        load_sweep(_write(tmp_path, body))
    text = str(info.value)
    for needle in ["ratios: 0.5 appears 2 times; list each ratio once",
                   "methods: 'frequency' appears twice",
                   "models: name 'grouped' appears twice",
                   "tasks: 'gsm8k' is listed 2 times (by 'gsm8k', 'math'); list each task once",
                   "tasks: 'toy_math' is listed 2 times; list each task once"]:
        assert needle in text, f"{needle!r} not in:\n{text}"
    assert "0.25" not in text


def test_a_judged_task_with_an_unset_key_variable_fails_validation(tmp_path, grouped_glm, monkeypatch):
    monkeypatch.delenv("HARNESS_TEST_JUDGE_KEY", raising=False)
    judge = {"base_url": "http://127.0.0.1:9/v1", "model": "judge", "api_key_env": "HARNESS_TEST_JUDGE_KEY"}
    body = _small_sweep(tmp_path, grouped_glm, tasks=["toy_math", "toy_creative"], judge=judge)
    with pytest.raises(SweepConfigError, match=r"judge.api_key_env: environment variable HARNESS_TEST_JUDGE_KEY "
                                               r"is not set, but toy_creative need\(s\) the judge at "
                                               r"http://127.0.0.1:9/v1; export HARNESS_TEST_JUDGE_KEY=<key>"):
        load_sweep(_write(tmp_path, body))
    # Without a judged task the judge's key is not needed.
    load_sweep(_write(tmp_path, {**body, "tasks": ["toy_math"]}))


class _AuthJudge:
    """A local OpenAI-style endpoint that wants `Bearer right-key` and then answers 400 to anything (as a
    judge may for a one-word prompt): a 4xx that still proves it answers."""

    def __init__(self):
        from http.server import ThreadingHTTPServer

        from harness.tasks.rubric_judge import JsonHandler

        class Handler(JsonHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Authorization") != "Bearer right-key":
                    self._send(401, {"error": {"message": "invalid api key"}})
                else:
                    self._send(400, {"error": {"message": "prompt too short"}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        import threading

        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_judge_preflight_before_any_work(tmp_path, grouped_glm, monkeypatch, capsys):
    """--dry-run pings the judge once: a wrong key (401) and a dead endpoint stop the sweep with exit 2 before
    anything is computed; a 400 from a live endpoint passes; the local rubric judge is started and asked."""
    import socket

    judge = _AuthJudge()
    try:
        monkeypatch.setenv("HARNESS_TEST_JUDGE_KEY", "wrong-key")
        spec = {"base_url": judge.base_url, "model": "judge", "api_key_env": "HARNESS_TEST_JUDGE_KEY"}
        path = _write(tmp_path, _small_sweep(tmp_path, grouped_glm, tasks=["toy_math", "toy_creative"], judge=spec))
        assert main([str(path), "--dry-run", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"judge: {judge.base_url}/chat/completions refused the test request (HTTP 401" in err
        assert "check the key in HARNESS_TEST_JUDGE_KEY" in err and "wrong-key" not in err

        monkeypatch.setenv("HARNESS_TEST_JUDGE_KEY", "right-key")
        assert main([str(path), "--dry-run", "--no-progress"]) == 0, capsys.readouterr().err
    finally:
        judge.close()
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    path = _write(tmp_path, _small_sweep(tmp_path, grouped_glm, tasks=["toy_creative"],
                                         judge={"base_url": dead, "model": "judge"}))
    assert main([str(path), "--dry-run", "--no-progress"]) == 2
    assert f"judge: {dead}/chat/completions did not answer a 1-token test request (ConnectionError" in \
        capsys.readouterr().err
    assert not any((tmp_path / "work").glob("calibration/*")), "work was done before the preflight"
    path = _write(tmp_path, _small_sweep(tmp_path, grouped_glm, tasks=["toy_creative"], judge={"serve": "rubric"}))
    assert main([str(path), "--dry-run", "--no-progress"]) == 0


def test_validation_returns_what_it_resolved_and_leaves_the_schema_plain(tmp_path, grouped_glm, monkeypatch):
    """load_sweep gives back the sweep with what validation found (model sources, statistics needs, folders made
    absolute against the base folder); the schema itself carries no state, so validating twice from two folders
    gives two answers and the first is unchanged."""
    from harness.archs import read_config
    from harness.methods.hc_smoe import HCSMoE
    from harness.methods.ream import REAM

    body = _small_sweep(tmp_path, grouped_glm, methods=["frequency", "hc_smoe", "ream"], work_dir="w",
                        results_dir="r", data_dir="d")
    (tmp_path / "a" / "d").mkdir(parents=True)
    (tmp_path / "b" / "d").mkdir(parents=True)
    path = _write(tmp_path, body)
    monkeypatch.chdir(tmp_path / "b")  # the working directory is only the default base
    first = load_sweep(path, base=tmp_path / "a")
    second = load_sweep(path)
    assert (first.cfg.work_path, first.cfg.results_path, first.cfg.data_path) == (
        tmp_path / "a" / "w", tmp_path / "a" / "r", tmp_path / "a" / "d")
    assert second.cfg.work_path == tmp_path / "b" / "w" and first.cfg.work_path == tmp_path / "a" / "w"
    assert first.needs == HCSMoE.needs | REAM.needs == {"mean_out", "gated_out", "router_similarity"}
    source = first.source(first.cfg.models[0])
    assert source.directory() == grouped_glm.resolve()
    assert read_config(source.metadata_dir) == read_config(grouped_glm)
    assert not SweepConfig.__private_attributes__  # nothing hidden on the schema
