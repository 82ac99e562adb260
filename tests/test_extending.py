"""A new method, task and model family are each one file — here in a package of their own, registered through
entry points, with no edit to any file of the harness — and a sweep uses all three (docs/extending.md).

The family is OLMoE (transformers' `olmoe`), which the harness does not know: a tiny one is built here with
transformers itself, served by vLLM after compression.
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

from harness.sweep.store import Store

REPO = Path(__file__).resolve().parents[1]
CALIBRATION = REPO / "tests" / "fixtures" / "calibration" / "code_instruct.jsonl"

FAMILY = '''
"""OLMoE: softmax top-k router, fused experts in memory, per-expert tensors on disk (the base layout)."""

from harness.archs.base import MoEArch


class OlmoeArch(MoEArch):
    model_type = "olmoe"
    expert_count_key = "num_experts"
'''

METHOD = '''
"""Keep the lowest-numbered experts: a deliberately naive baseline."""

import torch

from harness.methods.pruning import PruningMethod


class KeepFirst(PruningMethod):
    name = "keep_first"
    plot_label = "Keep first"
    plot_colour = "#000000"

    def scores(self, layer):
        return -torch.arange(layer.num_experts, dtype=torch.float64)
'''

TASK = '''
"""Does the model answer at all? One short chat question per sample, scored 1 for a non-empty reply."""

from harness.tasks.base import SampleRecord, Task, TaskResult
from harness.tasks.client import chat_many

QUESTIONS = ["What is two plus two?", "Name a colour.", "Say hello."]


class ShortAnswer(Task):
    name = "ext_short_answer"
    category = "math"
    version = "1"

    def run(self, ctx):
        questions = QUESTIONS[: ctx.limit] if ctx.limit else QUESTIONS
        replies = chat_many(ctx.endpoint, [[{"role": "user", "content": q}] for q in questions], ctx.generation)
        samples = [SampleRecord(sample_id=str(i), prompt=q, output=r.text, score=float(bool(r.text.strip())))
                   for i, (q, r) in enumerate(zip(questions, replies))]
        score = sum(s.score for s in samples) / len(samples)
        return TaskResult(task=self.name, category=self.category, score=score, metrics={"accuracy": score},
                          n_samples=len(samples), samples=samples, provenance=self.base_provenance(ctx))
'''

ENTRY_POINTS = """\
[harness.archs]
olmoe = harness_ext_demo.olmoe:OlmoeArch

[harness.methods]
keep_first = harness_ext_demo.keep_first:KeepFirst

[harness.tasks]
ext_short_answer = harness_ext_demo.short_answer:ShortAnswer
"""


def _package(root: Path) -> Path:
    """An installed-looking distribution: the modules plus a dist-info with the entry points."""
    package = root / "harness_ext_demo"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name, source in (("olmoe", FAMILY), ("keep_first", METHOD), ("short_answer", TASK)):
        (package / f"{name}.py").write_text(source.lstrip())
    info = root / "harness_ext_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: harness-ext-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return root


def _olmoe(out: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from harness.standins.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    config = AutoConfig.for_model(
        "olmoe", hidden_size=128, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, num_experts=8, num_experts_per_tok=2, vocab_size=len(tokenizer),
        max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    config.architectures = ["OlmoeForCausalLM"]
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.timeout(1200)
def test_a_new_method_task_and_family_from_a_package_run_in_a_sweep(tmp_path, monkeypatch):
    ext = _package(tmp_path / "site")
    model = _olmoe(tmp_path / "olmoe")
    body = {
        "name": "extended",
        "models": [{"name": "tiny-olmoe", "path": str(model),
                    "serving": {"dtype": "float32", "max_model_len": 1024, "startup_timeout_s": 600}}],
        "calibration": {"datasets": [{"source": str(CALIBRATION), "prompt_field": "instruction",
                                      "response_field": "output"}], "samples": 8, "length": 64},
        "methods": ["keep_first"], "ratios": [0.5], "baseline": False,
        "tasks": [{"name": "ext_short_answer", "limit": 2}],
        "generation": {"max_tokens": 8, "concurrency": 2},
        "work_dir": str(tmp_path / "work"), "results_dir": str(tmp_path / "results"),
    }
    sweep = tmp_path / "extended.yaml"
    sweep.write_text(yaml.safe_dump(body))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ext), str(REPO)])}
    done = subprocess.run([sys.executable, "-m", "harness.sweep", str(sweep), "--no-progress"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1100)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    table = pd.read_parquet(tmp_path / "results" / "results.parquet")
    rows = table[(table["task"] == "ext_short_answer") & (table["metric"] == "accuracy")]
    assert list(rows["method"]) == ["keep_first"] and list(rows["family"]) == ["olmoe"]
    (key,) = [e["key"] for e in Store(tmp_path / "work").events("computed") if e["stage"] == "checkpoint"]
    written = tmp_path / "work" / "checkpoint" / key / "model"
    plan = json.loads((written / "plan.json").read_text())
    assert all([g["members"] for g in layer["groups"]] == [[0], [1], [2], [3]] for layer in plan["layers"].values())
    assert json.loads((written / "config.json").read_text())["num_experts"] == 4
    # The figures take the method's label, colour and kind from its class: no table in harness.results.plots to edit.
    monkeypatch.syspath_prepend(str(ext))
    from harness.results import plots

    assert plots.method_label("keep_first") == "Keep first" and plots.method_kind("keep_first") == "pruning"
    assert plots.method_colours(["reap", "keep_first"])["keep_first"] == "#000000"
