"""Hub models the way users name them: `org/name`, resolved through a (fake, offline) Hugging Face cache.

The cache is laid out as huggingface_hub lays out downloads (`models--org--name/{blobs,snapshots,refs}`),
holds zoo models, and the sweep runs with HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointing at it: the same
environment a cluster user has after `hf download`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.checkpoint.hub import HubAccess, ModelUnavailableError, add_to_cache, resolve
from harness.sweep.store import Store
from tests.conftest import DATASETS

REPO = Path(__file__).resolve().parents[2]
CALIBRATION = REPO / "tests" / "fixtures" / "calibration" / "code_instruct.jsonl"
SERVING = {"dtype": "float32", "max_model_len": 1024, "startup_timeout_s": 600}
HUB_IDS = {"qwen3_moe": "testorg/tiny-qwen3-moe", "deepseek_v3": "testorg/tiny-kimi"}


@pytest.fixture(scope="module")
def fake_hub(tmp_path_factory, zoo_dir) -> Path:
    cache = tmp_path_factory.mktemp("hf_cache")
    for family, hub_id in HUB_IDS.items():
        add_to_cache(cache, hub_id, zoo_dir / family)
    return cache


def _offline(cache: Path) -> HubAccess:
    return HubAccess(cache_dir=cache, offline=True)


def test_hub_id_resolves_to_the_cached_commit(fake_hub, tmp_path):
    source = resolve(HUB_IDS["qwen3_moe"], None, tmp_path, _offline(fake_hub))
    repo = fake_hub / "models--testorg--tiny-qwen3-moe"
    assert source.sha == (repo / "refs" / "main").read_text()
    assert source.identity == {"hub_id": HUB_IDS["qwen3_moe"], "sha": source.sha}
    assert source.directory() == repo / "snapshots" / source.sha
    assert (source.directory() / "config.json").is_file()
    # A commit given as the revision is used as is.
    assert resolve(HUB_IDS["qwen3_moe"], source.sha, tmp_path, _offline(fake_hub)).sha == source.sha


def test_uncached_model_and_incomplete_snapshot_say_what_to_do(fake_hub, tmp_path, zoo_dir):
    with pytest.raises(ModelUnavailableError) as info:
        resolve("testorg/not-downloaded", None, tmp_path, _offline(fake_hub))
    message = str(info.value)
    assert "testorg/not-downloaded" in message and "HF_HUB_OFFLINE" in message and "hf download" in message
    with pytest.raises(ModelUnavailableError, match="revision v2"):
        resolve(HUB_IDS["qwen3_moe"], "v2", tmp_path, _offline(fake_hub))

    cache = tmp_path / "cache"
    add_to_cache(cache, "testorg/partial", zoo_dir / "mixtral")
    source = resolve("testorg/partial", None, tmp_path, _offline(cache))
    for weights in source.metadata_dir.glob("*.safetensors"):
        weights.unlink()  # an interrupted download: metadata there, weights not
    with pytest.raises(ModelUnavailableError, match="lacks 1 weight file"):
        source.directory()


def _sweep(tmp: Path, name: str, until_checkpoint_only: bool = False) -> Path:
    body = {
        "name": name,
        "models": [
            # family and layout read from the cached config.json ...
            {"name": "tiny-qwen", "path": HUB_IDS["qwen3_moe"], "serving": SERVING},
            # ... or declared, and then checked against it
            {"name": "tiny-kimi", "path": HUB_IDS["deepseek_v3"], "family": "deepseek_v3",
             "experts": {"num_experts": 8, "top_k": 2, "n_group": 1}, "serving": SERVING},
        ],
        "calibration": {"datasets": [{"source": str(CALIBRATION), "prompt_field": "instruction",
                                      "response_field": "output"}], "samples": 8, "length": 64},
        "calibration_batch_size": 4,
        "methods": ["reap"],
        "ratios": [0.5],
        "baseline": False,
        "tasks": [{"name": "gsm8k", "limit": 1}],
        "generation": {"max_tokens": 8, "concurrency": 1},
        "data_dir": str(DATASETS),
        "work_dir": str(tmp / "work"),
        "results_dir": str(tmp / "results"),
        "plots": False,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _run(sweep: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "harness.sweep", str(sweep), "--no-progress", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)


def _computed(work: Path, stage: str) -> list[dict]:
    return [e for e in Store(work).events("computed") if e["stage"] == stage]


@pytest.mark.timeout(1800)
def test_hub_sweep_end_to_end_cached_and_pinned_to_the_commit(tmp_path, zoo_dir):
    """calibration -> plan -> checkpoint -> vLLM -> a task for two hub models, then: a second run does
    nothing, and a moved refs/main recomputes exactly that model."""
    cache = tmp_path / "hf_cache"
    shas = {family: add_to_cache(cache, hub_id, zoo_dir / family) for family, hub_id in HUB_IDS.items()}
    sweep = _sweep(tmp_path, "hub")
    work = tmp_path / "work"

    first = _run(sweep, cache)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    table = pd.read_parquet(tmp_path / "results" / "results.parquet")
    assert set(table["model"]) == {"tiny-qwen", "tiny-kimi"}
    assert set(table[table["task"] == "gsm8k"]["method"]) == {"reap"}
    for stage in ("calibration", "plan", "checkpoint", "eval"):
        assert len(_computed(work, stage)) == 2, stage
    # Keys are made of the commit, and the store's done records say so.
    for event in _computed(work, "calibration"):
        settings = Store(work).done_meta("calibration", event["key"])["settings"]
        assert settings["model"]["sha"] in shas.values() and settings["model"]["hub_id"] in HUB_IDS.values()
    recipes = [json.loads(p.read_text()) for p in (work / "checkpoint").glob("*/model/recipe.json")]
    assert {r["family"] for r in recipes} == {"qwen3_moe", "deepseek_v3"}

    again = _run(sweep, cache)
    assert again.returncode == 0
    assert len(Store(work).events("computed")) == 8, "the second run of a finished hub sweep recomputed something"

    # The branch moves to another commit (same files plus a changed one): that model is recomputed, the other not.
    moved = tmp_path / "moved"
    import shutil

    shutil.copytree(zoo_dir / "qwen3_moe", moved, symlinks=False)
    (moved / "README.md").write_text("a new commit\n")
    new_sha = add_to_cache(cache, HUB_IDS["qwen3_moe"], moved)
    assert new_sha != shas["qwen3_moe"]
    dry = _run(sweep, cache, "--dry-run")
    assert f"{HUB_IDS['qwen3_moe']}@{new_sha[:12]}" in dry.stdout
    third = _run(sweep, cache, "--until", "checkpoint")
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    calibrations = _computed(work, "calibration")
    assert [e["model"] for e in calibrations] == ["tiny-qwen", "tiny-kimi", "tiny-qwen"]
    assert len(_computed(work, "checkpoint")) == 3


def test_uncached_hub_model_fails_validation_naming_it(tmp_path, fake_hub):
    sweep = _sweep(tmp_path, "missing")
    body = yaml.safe_load(sweep.read_text())
    body["models"][1]["path"] = "testorg/never-downloaded"
    sweep.write_text(yaml.safe_dump(body))
    done = _run(sweep, fake_hub, "--dry-run")
    assert done.returncode == 2
    assert "models[1] (tiny-kimi): hub model testorg/never-downloaded (revision main) is not in the Hugging Face " \
           "cache" in done.stderr
    assert not (tmp_path / "work").exists(), "nothing may start before validation passed"


def test_declared_layout_is_checked_against_the_cached_config(tmp_path, fake_hub):
    sweep = _sweep(tmp_path, "declared")
    body = yaml.safe_load(sweep.read_text())
    body["models"][1]["experts"]["num_experts"] = 384
    sweep.write_text(yaml.safe_dump(body))
    done = _run(sweep, fake_hub, "--dry-run")
    assert done.returncode == 2 and "declares 384 experts" in done.stderr
