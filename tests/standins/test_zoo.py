"""The zoo: every seed family's structure, determinism, a working tokenizer, uneven routing."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.archs import get_arch
from harness.calibration.observer import Observer
from harness.standins.zoo import ZOO, build_model, checkpoint_digest

TEXTS = [
    "The capital of France is Paris, and the Seine runs through it.",
    "def is_prime(n):\n    for i in range(2, n):\n        if n % i == 0:\n            return False\n    return True",
    "Natalia sold 48 clips in April and half as many in May. 48 + 24 = 72.",
    "Once upon a time a girl named Mira wrote stories about dragons.",
    "Which of the following is a mammal? A. shark B. whale C. trout",
]

# family -> (expert-count key, top-k key, MoE layers, has shared expert, has correction bias)
STRUCTURE = {
    "qwen3_moe": ("num_experts", "num_experts_per_tok", [0, 1, 2], False, False),
    "mixtral": ("num_local_experts", "num_experts_per_tok", [0, 1, 2], False, False),
    "ernie4_5_moe": ("moe_num_experts", "moe_k", [1, 2], True, True),
    "glm4_moe": ("n_routed_experts", "num_experts_per_tok", [1, 2], True, True),
    "glm4_moe_grouped": ("n_routed_experts", "num_experts_per_tok", [1, 2], True, True),
    "deepseek_v3": ("n_routed_experts", "num_experts_per_tok", [1, 2], True, True),
    "glm4_moe_lite": ("n_routed_experts", "num_experts_per_tok", [1, 2], True, True),
    "kimi_linear": ("num_experts", "num_experts_per_token", [1, 2], True, True),
    "nemotron_h": ("n_routed_experts", "num_experts_per_tok", [1, 3], True, True),
    "llama4_text": ("num_local_experts", "num_experts_per_tok", [0, 1, 2], True, False),
    "gpt_oss": ("num_local_experts", "num_experts_per_tok", [0, 1, 2], False, False),
    "minimax_m2": ("num_local_experts", "num_experts_per_tok", [0, 1, 2], False, True),
    "qwen3_5_moe": ("num_experts", "num_experts_per_tok", [0, 1, 2], True, False),
    "qwen3_next": ("num_experts", "num_experts_per_tok", [0, 1, 2], True, False),
}


def _load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _checkpoint_keys(path) -> list[str]:
    with safe_open(str(path / "model.safetensors"), "pt") as handle:
        return list(handle.keys())


def test_zoo_covers_every_seed_family():
    assert {spec.model_type for spec in ZOO.values()} == {
        "qwen3_moe", "mixtral", "ernie4_5_moe", "glm4_moe", "deepseek_v3", "llama4_text", "gpt_oss",
        "minimax_m2", "qwen3_5_moe_text", "qwen3_next", "glm4_moe_lite", "kimi_linear",
        "nemotron_h",
    }
    assert set(STRUCTURE) == set(ZOO)


@pytest.mark.parametrize("family", list(ZOO))
def test_family_structure_and_hf_forward(zoo_dir, family):
    path = zoo_dir / family
    arch = get_arch(path)
    config = arch.config  # a multimodal wrapper's text_config
    assert arch.model_type == ZOO[family].model_type
    assert json.loads((path / "config.json").read_text())["model_type"] == (ZOO[family].wrapper or arch.model_type)
    n_key, k_key, moe_layers, shared, corrected = STRUCTURE[family]
    n_experts, top_k = config[n_key], config[k_key]
    assert n_experts >= 8 and 1 <= top_k < n_experts

    keys = _checkpoint_keys(path)
    for layer in range(config["num_hidden_layers"]):
        layer_keys = [k for k in keys if k.startswith(arch.layer_prefix(layer))]
        is_moe = any(".experts." in k for k in layer_keys)
        assert is_moe == (layer in moe_layers), f"layer {layer}: MoE={is_moe}"
        if layer in moe_layers:
            assert any("shared_expert" in k for k in layer_keys) == shared
            biases = [k for k in layer_keys if k.endswith("e_score_correction_bias")]
            assert len(biases) == (1 if corrected else 0), biases
            if corrected:
                with safe_open(str(path / "model.safetensors"), "pt") as handle:
                    bias = handle.get_tensor(biases[0]).float()
                assert bias.numel() == n_experts and bias.std() > 0.01, "correction bias must be spread"

    model = _load(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch.input_ids.shape and torch.isfinite(logits).all()


def test_family_specific_routing_settings(zoo_dir):
    glm = json.loads((zoo_dir / "glm4_moe" / "config.json").read_text())
    assert glm["routed_scaling_factor"] != 1.0 and glm["first_k_dense_replace"] == 1
    grouped = json.loads((zoo_dir / "glm4_moe_grouped" / "config.json").read_text())
    assert grouped["n_group"] > 1 and grouped["topk_group"] < grouped["n_group"]
    kimi = json.loads((zoo_dir / "deepseek_v3" / "config.json").read_text())
    assert kimi["topk_method"] == "noaux_tc" and kimi["scoring_func"] == "sigmoid"
    assert "model.layers.1.mlp.gate.e_score_correction_bias" in _checkpoint_keys(zoo_dir / "deepseek_v3")


@pytest.mark.parametrize("family", list(ZOO))
def test_routing_is_uneven_and_expert_specific(zoo_dir, family):
    path = zoo_dir / family
    model = _load(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad(), Observer(model, get_arch(path)) as observer:
        observer.set_mask(batch.attention_mask)  # count real tokens only
        model(**batch)
    counts = {index: stats.count for index, stats in observer.stats.items()}
    config = get_arch(path).config
    n_key, k_key, moe_layers, _, _ = STRUCTURE[family]
    assert len(counts) == len(moe_layers)
    real_tokens = int(batch.attention_mask.sum())
    for name, layer_counts in counts.items():
        layer_counts = layer_counts.double()
        assert layer_counts.numel() == config[n_key]
        assert layer_counts.sum() == real_tokens * config[k_key], name
        spread = layer_counts.std() / layer_counts.mean()
        assert spread > 0.3, f"{family} {name}: near-uniform routing {layer_counts.tolist()}"
        assert layer_counts.max() >= 2 * max(layer_counts.min(), 1), f"{family} {name}: {layer_counts.tolist()}"


def test_grouped_router_limits_selection_to_topk_groups(zoo_dir):
    path = zoo_dir / "glm4_moe_grouped"
    config = json.loads((path / "config.json").read_text())
    model = _load(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    group_size = config["n_routed_experts"] // config["n_group"]
    seen = []

    def hook(module, args, kwargs):
        seen.append(args[1] if len(args) > 1 else kwargs["top_k_index"])

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True)
               for n, m in model.named_modules() if n.endswith("mlp.experts")]
    with torch.no_grad():
        model(**batch)
    for h in handles:
        h.remove()
    groups_used = set()
    for index in seen:
        per_token = (index // group_size)
        for row in per_token.tolist():
            assert len(set(row)) <= config["topk_group"], row
            groups_used.update(row)
    assert len(groups_used) == config["n_group"], "every group should be chosen by some token"


def test_build_is_deterministic(zoo_dir, tmp_path):
    again = build_model("glm4_moe", tmp_path / "glm4_moe")
    assert checkpoint_digest(again) == checkpoint_digest(zoo_dir / "glm4_moe")
    other_seed = build_model("glm4_moe", tmp_path / "other", seed=7)
    assert checkpoint_digest(other_seed) != checkpoint_digest(again)


def test_tokenizer_round_trips_and_has_chat_template(zoo_dir):
    tokenizer = AutoTokenizer.from_pretrained(zoo_dir / "qwen3_moe")
    for text in TEXTS + ["naïve café ∑ 𝔘 — unicode"]:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.decode(ids) == text
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        tokenize=False,
    )
    assert rendered == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                           add_generation_prompt=True, enable_thinking=False)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_cli_builds_one_family(tmp_path):
    from harness.standins.zoo import main

    assert main(["build", str(tmp_path), "--family", "mixtral"]) == 0
    assert (tmp_path / "mixtral" / "config.json").is_file()
    assert not (tmp_path / "qwen3_moe").exists()
