"""Tiny, deterministic MoE checkpoints of every seed family, built offline.

Each zoo model keeps the *structure* of its seed model (shared experts, first dense
layers, sigmoid + correction-bias routing, expert groups, scaling factor) at a size
that loads in seconds on a CPU, and is served by vLLM's CPU build. Weights are drawn
from a fixed seed, then the routers are reshaped so that expert usage is clearly
uneven: random initialisation routes almost uniformly, which would let broken
calibration or pruning code pass.

    python -m harness.zoo build DIR [--family F ...] [--quant fp8|w4a16]

Quantised variants (`--quant`, `build_model(..., quant=...)`) are the float model,
quantised after building in the on-disk format of a quantised seed checkpoint:

* `fp8` (Qwen3-Coder-480B-A35B-Instruct-FP8): every Linear weight of attention, dense
  MLPs, shared and routed experts as float8_e4m3fn with a float32 `weight_scale_inv` per
  128 x 128 block (grid ceil-divided); embeddings, lm_head, norms and routers stay float
  and are listed in `modules_to_not_convert`.
* `w4a16` (Kimi-K2 W4A16, laid out like Kimi-K2-Thinking's native int4 release): the routed
  experts only, compressed-tensors pack-quantized int4, symmetric, one float32 scale per 32
  input columns; attention, the dense MLP, shared experts, routers and lm_head stay float.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.standins.tokenizer import build_tokenizer

SEED = 1234

# Sizes shared by every family. head_dim must be 64: vLLM's CPU attention refuses 16.
_COMMON: dict[str, Any] = dict(
    hidden_size=128,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
    rms_norm_eps=1e-6,
)


@dataclass(frozen=True)
class ZooSpec:
    """One tiny model: its transformers model_type and the config that mirrors the seed."""

    name: str
    model_type: str
    seed_model: str
    config: dict[str, Any] = field(default_factory=dict)
    # Spread of the selection-only correction bias (None: the family has none).
    correction_bias_std: float | None = None
    # Spread of the router's own bias and of the experts' biases (families that have them; gpt-oss).
    router_bias_std: float | None = None
    expert_bias_std: float | None = None
    # The multimodal wrapper the seed checkpoint is stored as (its model_type), and the wrapper's own
    # settings (a tiny vision tower); `config` is then its text_config. None: a plain causal LM.
    wrapper: str | None = None
    wrapper_config: dict[str, Any] = field(default_factory=dict)
    # Spread of the routers' weights on the constant embedding channel (the per-expert popularity lever).
    popularity_std: float = 0.4


# GLM-4.5-Air's layout in small; the grouped stand-in differs only in its router groups.
_GLM: dict[str, Any] = dict(
    head_dim=64,
    intermediate_size=256,
    moe_intermediate_size=64,
    n_routed_experts=8,
    num_experts_per_tok=2,
    n_shared_experts=1,
    first_k_dense_replace=1,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    n_group=1,
    topk_group=1,
    partial_rotary_factor=0.5,
)

# Multi-head latent attention (DeepSeek-V3, GLM-4.7-Flash, Kimi-Linear) in small. vLLM's CPU MLA kernel only handles
# DeepSeek's latent size (kv_lora_rank 512 + rope 64 = 576); one latent per head.
_MLA: dict[str, Any] = dict(
    num_key_value_heads=2,
    kv_lora_rank=512,
    q_lora_rank=None,
    qk_rope_head_dim=64,
    qk_nope_head_dim=64,
    v_head_dim=64,
)

ZOO: dict[str, ZooSpec] = {
    spec.name: spec
    for spec in [
        ZooSpec(
            "qwen3_moe",
            "qwen3_moe",
            "Qwen3-30B-A3B / Qwen3-Coder-480B-A35B",
            dict(
                head_dim=64,
                intermediate_size=256,
                moe_intermediate_size=64,
                num_experts=8,
                num_experts_per_tok=2,
                norm_topk_prob=True,
            ),
        ),
        ZooSpec(
            "mixtral",
            "mixtral",
            "Mixtral-8x7B-Instruct-v0.1",
            dict(head_dim=64, intermediate_size=64, num_local_experts=8, num_experts_per_tok=2),
        ),
        ZooSpec(
            "ernie4_5_moe",
            "ernie4_5_moe",
            "ERNIE-4.5-21B-A3B",
            dict(
                intermediate_size=256,
                moe_intermediate_size=64,
                moe_num_experts=8,
                moe_k=2,
                moe_num_shared_experts=1,
                moe_layer_start_index=1,
                use_bias=False,
            ),
            correction_bias_std=0.05,
        ),
        ZooSpec(
            "glm4_moe",
            "glm4_moe",
            "GLM-4.5-Air",
            _GLM,
            correction_bias_std=0.3,
        ),
        ZooSpec(
            "glm4_moe_grouped",
            "glm4_moe",
            "GLM-4.5-Air with group-limited routing (n_group > 1, topk_group < n_group)",
            {**_GLM, "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 4, "topk_group": 2},
            correction_bias_std=0.3,
        ),
        ZooSpec(
            "deepseek_v3",
            "deepseek_v3",
            "Kimi-K2-Instruct",
            dict(
                intermediate_size=256,
                moe_intermediate_size=64,
                n_routed_experts=8,
                num_experts_per_tok=2,
                n_shared_experts=1,
                first_k_dense_replace=1,
                routed_scaling_factor=2.827,
                norm_topk_prob=True,
                n_group=1,
                topk_group=1,
                **_MLA,
                # As in Kimi-K2's config.json: vLLM builds the correction bias only
                # for noaux_tc routing, and transformers ignores these keys.
                topk_method="noaux_tc",
                scoring_func="sigmoid",
                moe_layer_freq=1,
            ),
            correction_bias_std=0.3,
        ),
        ZooSpec(
            "glm4_moe_lite",
            "glm4_moe_lite",
            "GLM-4.7-Flash (MLA attention, GLM-4.5 routing)",
            dict(
                intermediate_size=256,
                moe_intermediate_size=64,
                n_routed_experts=8,
                num_experts_per_tok=2,
                n_shared_experts=1,
                first_k_dense_replace=1,  # what vLLM reads; transformers' mlp_layer_types says the same
                routed_scaling_factor=1.8,
                norm_topk_prob=True,
                n_group=1,
                topk_group=1,
                **{**_MLA, "q_lora_rank": 64},  # the release has a query latent too (768)
            ),
            correction_bias_std=0.3,
        ),
        ZooSpec(
            "kimi_linear",
            "kimi_linear",
            "Kimi-Linear-48B-A3B-Instruct (KDA + MLA, DeepSeek-V3 routing)",
            dict(
                intermediate_size=256,
                moe_intermediate_size=64,
                num_experts=8,
                num_experts_per_token=2,
                num_shared_experts=1,
                first_k_dense_replace=1,
                routed_scaling_factor=2.446,
                moe_renormalize=True,
                num_expert_group=1,
                topk_group=1,
                **_MLA,  # no query latent, as the release
                # The release's own form (1-based layer lists): KDA, MLA, KDA (the real model: MLA every fourth).
                linear_attn_config={"head_dim": 64, "num_heads": 2, "short_conv_kernel_size": 4,
                                    "kda_layers": [1, 3], "full_attn_layers": [2]},
            ),
            correction_bias_std=0.3,
        ),
        ZooSpec(
            "nemotron_h",
            "nemotron_h",
            "NVIDIA-Nemotron-3-Nano-30B-A3B (Mamba-2 + attention + MoE layers, ungated relu2 experts)",
            dict(
                # The release's form: one mixer per layer from the pattern (the real model: 52 layers, 23 of them
                # MoE, 6 attention); here Mamba-2, MoE, attention, MoE.
                hybrid_override_pattern="ME*E",
                num_hidden_layers=4,
                head_dim=64,
                intermediate_size=256,  # a '-' layer's MLP (none in the pattern, as in the release)
                moe_intermediate_size=64,
                moe_shared_expert_intermediate_size=128,  # the release: twice the routed experts' size
                n_routed_experts=8,
                num_experts_per_tok=2,
                n_shared_experts=1,
                n_group=1,
                topk_group=1,
                norm_topk_prob=True,
                routed_scaling_factor=2.5,
                mlp_hidden_act="relu2",
                mamba_num_heads=4,
                mamba_head_dim=64,
                n_groups=2,
                ssm_state_size=32,
                conv_kernel=4,
                chunk_size=128,
                layer_norm_epsilon=1e-5,
            ),
            correction_bias_std=0.3,
        ),
        ZooSpec(
            "qwen3_5_moe",
            "qwen3_5_moe_text",
            "Qwen3.5-35B-A3B / Qwen3.5-397B-A17B (multimodal wrapper, fused experts on disk)",
            dict(
                head_dim=64,
                moe_intermediate_size=64,
                shared_expert_intermediate_size=64,
                num_experts=8,
                num_experts_per_tok=2,
                # Gated DeltaNet linear attention; the real models put one full-attention layer after every
                # three linear ones (interval 4). Interval 2 keeps both kinds in three layers: linear, full, linear.
                full_attention_interval=2,
                linear_key_head_dim=64,
                linear_value_head_dim=64,
                linear_num_key_heads=1,
                linear_num_value_heads=2,
                linear_conv_kernel_dim=4,
            ),
            wrapper="qwen3_5_moe",
            popularity_std=1.0,  # the linear-attention mixing dilutes the constant channel more than attention does
            wrapper_config=dict(vision_config=dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=1,
                                                   out_hidden_size=128, num_position_embeddings=64,
                                                   patch_size=16, spatial_merge_size=2, temporal_patch_size=2)),
        ),
        ZooSpec(
            "qwen3_next",
            "qwen3_next",
            "Qwen3-Next-80B-A3B-Instruct",
            dict(
                head_dim=64,
                intermediate_size=256,
                moe_intermediate_size=64,
                shared_expert_intermediate_size=64,
                num_experts=8,
                num_experts_per_tok=2,
                norm_topk_prob=True,
                decoder_sparse_step=1,
                # As for qwen3_5_moe: interval 2 (linear, full, linear) instead of the real 4.
                full_attention_interval=2,
                linear_key_head_dim=64,
                linear_value_head_dim=64,
                linear_num_key_heads=1,
                linear_num_value_heads=2,
                linear_conv_kernel_dim=4,
            ),
            popularity_std=1.0,
        ),
        ZooSpec(
            "llama4_text",
            "llama4_text",
            "Llama-4-Scout-17B-16E-Instruct",
            dict(
                head_dim=64,
                intermediate_size=64,
                intermediate_size_mlp=256,
                num_local_experts=8,
                num_experts_per_tok=1,
                interleave_moe_layer_step=1,
                attention_chunk_size=8192,
            ),
        ),
        ZooSpec(
            "gpt_oss",
            "gpt_oss",
            "gpt-oss-120b / gpt-oss-20b",
            dict(
                head_dim=64,
                intermediate_size=64,
                num_local_experts=8,
                num_experts_per_tok=2,
                # Alternating sliding-window and full attention as in the release, with a window shorter
                # than the test texts so that both masks matter; a SwiGLU limit the tiny activations
                # reach, so that the clamps are exercised.
                sliding_window=16,
                swiglu_limit=0.3,
                # YaRN as released (factor 32 over the original context), scaled to the zoo's 2048 positions.
                rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=32.0, beta_fast=32.0,
                                     beta_slow=1.0, original_max_position_embeddings=64, truncate=False),
            ),
            router_bias_std=0.5,
            expert_bias_std=0.05,
        ),
        ZooSpec(
            "minimax_m2",
            "minimax_m2",
            "MiniMax-M2 / M2.1 / M2.5",
            dict(
                head_dim=64,
                intermediate_size=64,
                num_local_experts=8,
                num_experts_per_tok=2,
                # As released: q/k RMS-normed over all heads, rotary on half of each head (vLLM reads the
                # release's `rotary_dim`), sigmoid scores with a routing bias (vLLM ignores the bias unless
                # `use_routing_bias` says so).
                rope_parameters=dict(rope_type="default", rope_theta=5000000.0, partial_rotary_factor=0.5),
                rotary_dim=32,
                scoring_func="sigmoid",
                use_routing_bias=True,
                use_qk_norm=True,
                qk_norm_type="per_layer",
            ),
            correction_bias_std=0.3,
        ),
    ]
}


def _make_config(spec: ZooSpec, special: dict[str, int], overrides: dict[str, Any] | None = None):
    from transformers import AutoConfig

    kwargs = {**_COMMON, **spec.config, **(overrides or {})}
    kwargs.update(
        vocab_size=special["vocab_size"],
        bos_token_id=special["bos"], eos_token_id=special["eos"], pad_token_id=special["pad"]
    )
    if spec.wrapper is not None:
        text = {k: v for k, v in kwargs.items() if k not in ("bos_token_id", "eos_token_id", "pad_token_id")}
        text.update(bos_token_id=special["bos"], eos_token_id=special["eos"], pad_token_id=special["pad"])
        config = AutoConfig.for_model(spec.wrapper, text_config=text, tie_word_embeddings=False,
                                      **spec.wrapper_config)
    else:
        config = AutoConfig.for_model(spec.model_type, **kwargs)
    config.architectures = [_ARCHITECTURES[spec.wrapper or spec.model_type]]
    return config


_ARCHITECTURES = {
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "ernie4_5_moe": "Ernie4_5_MoeForCausalLM",
    "glm4_moe": "Glm4MoeForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "glm4_moe_lite": "Glm4MoeLiteForCausalLM",
    "kimi_linear": "KimiLinearForCausalLM",
    "nemotron_h": "NemotronHForCausalLM",
    "llama4_text": "Llama4ForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
    "minimax_m2": "MiniMaxM2ForCausalLM",
    "qwen3_5_moe": "Qwen3_5MoeForConditionalGeneration",
    "qwen3_next": "Qwen3NextForCausalLM",
}

# transformers 5.x writes some config keys under its own canonical names; the seed
# checkpoints on the hub use these, and so must the zoo (tools key off them).
_HUB_CONFIG_KEYS = {"qwen3_moe": {"num_local_experts": "num_experts"}}
# ... and some tensors under their own names, which `save_pretrained` does not map back (MiniMax-M2's release keeps
# the correction bias on `block_sparse_moe`, where vLLM looks for it).
_HUB_TENSOR_NAMES = {"minimax_m2": {".mlp.e_score_correction_bias": ".block_sparse_moe.e_score_correction_bias"}}

_ROUTER_SUFFIXES = (".mlp.gate.weight", ".feed_forward.router.weight", ".mlp.router.weight", ".mixer.gate.weight")
_ROUTER_BIAS_SUFFIXES = (".mlp.router.bias",)
_EXPERT_BIAS_SUFFIXES = (".experts.gate_up_proj_bias", ".experts.down_proj_bias")


def _shape_routing(model, spec: ZooSpec, generator) -> None:
    """Make expert usage uneven and expert-specific.

    Two levers, both deterministic from the seed:
    * one embedding channel is set to a constant, so the residual stream carries a
      steady feature; the router column reading it acts as a per-expert popularity
      bias (qwen3 and mixtral routers have no bias of their own);
    * router rows get different norms, so some experts have sharper preferences.
    Families with a selection-only correction bias also get a spread-out bias, so that
    routing computed without it (softmax/sigmoid + top-k of logits) picks other experts.
    """
    import torch

    hidden = model.config.get_text_config().hidden_size
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        # Unit-scale embeddings keep the constant channel one feature among many after
        # RMSNorm instead of the whole normalised vector.
        emb.copy_(torch.randn(emb.shape, generator=generator))
        emb[:, 0] = 1.0
        for name, param in model.named_parameters():
            if not name.endswith(_ROUTER_SUFFIXES):
                continue
            n_experts = param.shape[0]
            base = torch.randn(n_experts, hidden, generator=generator) / math.sqrt(hidden)
            row_scale = torch.exp(0.5 * torch.randn(n_experts, 1, generator=generator))
            base = base * row_scale * 2.0
            base[:, 0] = spec.popularity_std * torch.randn(n_experts, generator=generator)
            param.copy_(base.to(param.dtype))
        if spec.correction_bias_std is not None:
            for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
                if name.endswith("e_score_correction_bias"):
                    bias = torch.randn(tensor.shape, generator=generator) * spec.correction_bias_std
                    tensor.copy_(bias.to(tensor.dtype))
        for suffixes, std in ((_ROUTER_BIAS_SUFFIXES, spec.router_bias_std), (_EXPERT_BIAS_SUFFIXES,
                                                                              spec.expert_bias_std)):
            if std is None:
                continue
            for name, param in model.named_parameters():
                if name.endswith(suffixes):
                    param.copy_((torch.randn(param.shape, generator=generator) * std).to(param.dtype))


def _ensure_saved_tensors(model, out_dir: Path) -> list[str]:
    """Add routing tensors that `save_pretrained` dropped (deepseek_v3's correction bias).

    vLLM refuses a deepseek_v3 checkpoint without `e_score_correction_bias`, and the
    real Kimi-K2 checkpoint has it, so the zoo copy must too.
    """
    from safetensors.torch import save_file

    from harness.checkpoint.shards import ShardReader

    keys = set(ShardReader(out_dir).tensors)
    # Hub names can differ from in-memory names (ERNIE keeps the bias under `mlp.moe_statics`, Kimi-Linear's
    # block is `block_sparse_moe`, Nemotron-H's model is `backbone.`), so a layer counts as covered if any of its
    # keys holds it.
    def layer(key: str) -> str:
        return re.sub(r"^(.*?layers\.\d+)\..*$", r"\1", re.sub(r"^backbone\.", "model.", key))

    covered = {layer(key) for key in keys if key.endswith("e_score_correction_bias")}
    missing = {
        name: tensor.detach().clone().contiguous()
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers())
        if name.endswith("e_score_correction_bias") and layer(name) not in covered
    }
    single = out_dir / "model.safetensors"
    if missing and single.is_file():
        from safetensors.torch import load_file

        save_file({**load_file(str(single)), **missing}, str(single), metadata={"format": "pt"})
    elif missing:  # sharded: one more shard, listed in the index
        extra = "model-routing.safetensors"
        save_file(missing, str(out_dir / extra), metadata={"format": "pt"})
        index_path = out_dir / "model.safetensors.index.json"
        index = json.loads(index_path.read_text())
        index["weight_map"].update({name: extra for name in missing})
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return sorted(missing)


class _SavedTensors:
    """A saved zoo checkpoint's tensors, for an edit after save_pretrained: read whole, written back in the same form
    (one file as one file; shards re-packed in order under save_pretrained's size limit, with a new index), so the
    large models of the memory benchmark, which save_pretrained shards, take the same edits as the small ones."""

    INDEX = "model.safetensors.index.json"

    def __init__(self, out_dir: Path):
        from safetensors.torch import load_file

        self.out_dir = out_dir
        self.single = out_dir / "model.safetensors"
        index = out_dir / self.INDEX
        if self.single.is_file():
            self.shards = [self.single.name]
        elif index.is_file():
            self.shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            raise ValueError(f"{out_dir}: no saved safetensors checkpoint to edit")
        self.tensors: dict = {}
        for shard in self.shards:
            self.tensors.update(load_file(str(out_dir / shard)))

    def write(self, tensors: dict, max_shard_bytes: int = 10**9) -> None:
        from safetensors.torch import save_file

        if self.shards == [self.single.name]:
            save_file(tensors, str(self.single), metadata={"format": "pt"})
            return
        groups: list[dict] = [{}]
        size = 0
        for name, tensor in tensors.items():
            nbytes = tensor.numel() * tensor.element_size()
            if groups[-1] and size + nbytes > max_shard_bytes:
                groups.append({})
                size = 0
            groups[-1][name] = tensor
            size += nbytes
        for shard in self.shards:
            (self.out_dir / shard).unlink()
        weight_map = {}
        for i, group in enumerate(groups, 1):
            shard = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
            save_file(group, str(self.out_dir / shard), metadata={"format": "pt"})
            weight_map.update({name: shard for name in group})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out_dir / self.INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _use_hub_tensor_names(out_dir: Path, model_type: str) -> None:
    """Rename the saved tensors `_HUB_TENSOR_NAMES` lists to the release's names."""
    renames = _HUB_TENSOR_NAMES.get(model_type)
    if not renames:
        return
    saved = _SavedTensors(out_dir)
    tensors = saved.tensors
    renamed = {}
    for key, tensor in tensors.items():
        for ours, hub in renames.items():
            if key.endswith(ours):
                key = key[: -len(ours)] + hub
        renamed[key] = tensor
    saved.write(renamed)


def _fuse_experts_on_disk(out_dir: Path) -> int:
    """Store the routed experts fused when the family's checkpoints do (`hub_fused_expert_names`): transformers
    5.x saves some fused-expert models (Qwen3.5-MoE) per expert, unlike their hub releases. Returns the number
    of layers fused (0: the family stores experts per expert, or save_pretrained fused them already)."""
    import torch

    from harness.archs import get_arch
    from harness.archs.base import ExpertWeights
    from harness.checkpoint.roles import TensorRoles

    arch = get_arch(out_dir)
    names = arch.hub_fused_expert_names
    if names is None:
        return 0
    saved = _SavedTensors(out_dir)
    tensors = saved.tensors
    roles = TensorRoles(arch, tensors)
    fused = 0
    for layer, found in roles.inventory(tensors).items():
        if not found.experts:
            continue
        hub = {hub_name: ours for ours, hub_name in arch.hub_expert_names.items()}
        rows = []
        for j in sorted(found.experts):
            parts = {hub[name.removesuffix(".weight")]: tensors.pop(key) for name, key in found.experts[j].items()}
            rows.append(arch.join_fused_expert(ExpertWeights(**parts)))
        block = roles.block
        tensors[roles.key(layer, f"{block}.experts.{names['gate_up']}")] = torch.stack([g for g, _ in rows])
        tensors[roles.key(layer, f"{block}.experts.{names['down']}")] = torch.stack([d for _, d in rows])
        fused += 1
    if fused:
        saved.write(tensors)
    return fused


def _add_mtp_module(out_dir: Path, generator) -> list[str]:
    """Store the multi-token-prediction module beside the decoder stack where the family's releases do
    (`extra_module_prefixes`, Qwen3-Next and Qwen3.5: `mtp.fc`, three norms and one full-attention decoder
    layer with its own routed experts, in the checkpoint's expert layout). transformers and vLLM's causal LM skip
    it; a compressed checkpoint must not trip over its experts. Returns the keys added."""
    import torch

    from harness.archs import get_arch

    arch = get_arch(out_dir)
    prefix = next((p for p in arch.extra_module_prefixes if p.startswith("mtp")), None)
    if prefix is None:
        return []
    saved = _SavedTensors(out_dir)
    tensors = saved.tensors
    hidden = int(arch.config["hidden_size"])
    full = arch.config["layer_types"].index("full_attention")
    source = arch.layer_prefix(full)
    added = {f"{prefix}layers.0.{k[len(source):]}": torch.randn(t.shape, generator=generator) * t.std().nan_to_num(0.02)
             for k, t in tensors.items() if k.startswith(source)}
    added[f"{prefix}fc.weight"] = torch.randn(hidden, 2 * hidden, generator=generator) / math.sqrt(2 * hidden)
    for norm in ("pre_fc_norm_hidden", "pre_fc_norm_embedding", "norm"):
        added[f"{prefix}{norm}.weight"] = torch.ones(hidden)
    saved.write({**tensors, **added})
    return sorted(added)


def _use_hub_config_keys(out_dir: Path, model_type: str) -> None:
    renames = _HUB_CONFIG_KEYS.get(model_type)
    if not renames and model_type != "nemotron_h":
        return
    path = out_dir / "config.json"
    config = json.loads(path.read_text())
    for ours, hub in (renames or {}).items():
        if ours in config:
            config[hub] = config.pop(ours)
    if model_type == "nemotron_h":
        _nemotron_h_release_config(config)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _nemotron_h_release_config(config: dict[str, Any]) -> None:
    """Nemotron-H's config.json as the release writes it: the layer stack as `hybrid_override_pattern` with
    `num_hidden_layers` (transformers 5.19 saves `layers_block_type` instead, and no layer count), the MTP pattern
    only with MTP layers, and an infinite time-step limit as JSON's Infinity."""
    letters = {"linear_attention": "M", "full_attention": "*", "mlp": "-", "moe": "E"}
    types = config.pop("layers_block_type")
    config["hybrid_override_pattern"] = "".join(letters[t] for t in types)
    config["num_hidden_layers"] = len(types)
    if not config.get("num_nextn_predict_layers"):
        config.pop("mtp_layers_block_type", None)
    config["time_step_limit"] = [v if not isinstance(v, dict) else float(v["__float__"])
                                 for v in config.get("time_step_limit", [0.0, math.inf])]


@dataclass(frozen=True)
class QuantSpec:
    """A quantised zoo variant: which seed checkpoint's format it mirrors, and its parameters."""

    name: str
    format: str  # harness.checkpoint.quantisation.FORMATS
    mirrors: str
    block_size: tuple[int, int] | None = None  # fp8_block
    group_size: int | None = None  # packed
    scale_dtype: str = "float32"


QUANTS: dict[str, QuantSpec] = {
    "fp8": QuantSpec("fp8", "fp8_block", "Qwen3-Coder-480B-A35B-Instruct-FP8", block_size=(128, 128)),
    "w4a16": QuantSpec("w4a16", "packed_int4", "Kimi-K2-Instruct W4A16 (routed experts int4, as Kimi-K2-Thinking)",
                       group_size=32),
    "mxfp4": QuantSpec("mxfp4", "mxfp4", "openai/gpt-oss-120b (fused routed-expert weights MXFP4, biases float)",
                       group_size=32, scale_dtype="uint8"),
}

# gpt-oss's `modules_to_not_convert`: everything but the routed experts' two weights stays float.
_MXFP4_NOT_CONVERTED = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]

# Kimi-K2-Thinking's `ignore` list (what stays float beside lm_head), and the routers.
_W4A16_IGNORE = ["lm_head", r"re:.*self_attn.*", r"re:.*shared_experts?\..*",
                 r"re:.*mlp\.(gate|up|gate_up|down)_proj.*", r"re:.*mlp\.gate$"]


def _quantised_keys(keys: list[str], shapes: dict[str, tuple[int, ...]], layout, quant: QuantSpec) -> list[str]:
    """The hub weights a variant stores quantised."""
    if quant.format == "mxfp4":  # gpt-oss: the fused routed-expert weights, not their biases
        chosen = [k for k in keys if layout.role(k).kind == "fused" and layout.role(k).name in ("gate_up_proj",
                                                                                               "down_proj")]
        if not chosen:
            raise ValueError(f"{layout.arch.model_type}: MXFP4 stores fused expert tensors gate_up_proj / "
                             f"down_proj (gpt-oss); this checkpoint has none")
        return chosen
    if any(layout.role(k).kind == "fused" for k in keys):
        raise ValueError(f"{layout.arch.model_type}: the zoo quantises per-expert checkpoints only, not fused "
                         f"3-D expert tensors")
    if quant.format == "fp8_block":  # every Linear: 2-D weights but embeddings, lm_head and routers
        return [k for k in keys if k.endswith(".weight") and len(shapes[k]) == 2
                and not k.endswith(("embed_tokens.weight", "lm_head.weight")) and layout.role(k).kind != "router"]
    return [k for k in keys if k.endswith(".weight") and layout.role(k).kind == "expert"]


def _ignore_list(kept_modules: list[str]) -> list[str]:
    """Kimi-K2's patterns, plus any float Linear module they do not cover (other families)."""
    from harness.checkpoint.quantisation import WeightScheme

    patterns = WeightScheme(targets=tuple(p for p in _W4A16_IGNORE if p.startswith("re:")), num_bits=4,
                            type="int", strategy="group")
    extra = [m for m in kept_modules if m != "lm_head" and not patterns.matches(m)]
    return _W4A16_IGNORE + sorted(extra)


def quantise_model(model_dir: str | Path, quant: str) -> dict[str, Any]:
    """Quantise a float zoo checkpoint in place (tensors, index, config.json); returns what zoo.json records."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from harness.archs import get_arch
    from harness.checkpoint.quantisation import fp8_block_config, mxfp4_config, packed_int_config, quantise_tensors
    from harness.checkpoint.roles import TensorRoles

    if quant not in QUANTS:
        raise KeyError(f"unknown zoo quantisation {quant!r}; known: {', '.join(QUANTS)}")
    spec = QUANTS[quant]
    out = Path(model_dir)
    files = sorted(out.glob("*.safetensors"))
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        with safe_open(str(file), "pt") as handle:
            shapes.update({k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()})
    keys = sorted(shapes)
    layout = TensorRoles(get_arch(out), keys)
    chosen = set(_quantised_keys(keys, shapes, layout, spec))
    new_keys: dict[str, str] = {}
    for file in files:
        tensors = load_file(str(file))
        mine = [k for k in tensors if k in chosen]
        new = quantise_tensors(tensors, mine, spec.format, block=spec.block_size or (128, 128),
                               group_size=spec.group_size, scale_dtype=getattr(torch, spec.scale_dtype))
        save_file(new, str(file), metadata={"format": "pt"})
        new_keys.update(dict.fromkeys(new, file.name))
    index_path = out / "model.safetensors.index.json"
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        index["weight_map"] = dict(sorted(new_keys.items()))
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    kept = sorted({k.rpartition(".")[0] for k in keys if k not in chosen})
    kept_linear = [m for m in kept if len(shapes.get(f"{m}.weight", ())) == 2 and not m.endswith("embed_tokens")]
    if spec.format == "fp8_block":
        qconfig = fp8_block_config(kept, spec.block_size)
    elif spec.format == "mxfp4":
        qconfig = mxfp4_config(_MXFP4_NOT_CONVERTED)
    else:
        qconfig = packed_int_config(_ignore_list(kept_linear), num_bits=4, group_size=spec.group_size)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"] = qconfig
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return {"scheme": spec.name, "format": spec.format, "mirrors": spec.mirrors,
            "block_size": list(spec.block_size) if spec.block_size else None, "group_size": spec.group_size,
            "scale_dtype": spec.scale_dtype, "quantised_weights": len(chosen)}


def build_model(name: str, out_dir: str | Path, seed: int = SEED,
                overrides: dict[str, Any] | None = None, quant: str | None = None) -> Path:
    """Write zoo model `name` (config, safetensors, tokenizer, chat template) to out_dir.

    `overrides` changes config values (e.g. a scaled-up copy for benchmarks); `quant`
    ("fp8", "w4a16"; see QUANTS) stores the same model quantised.
    """
    if quant is not None and quant not in QUANTS:
        raise KeyError(f"unknown zoo quantisation {quant!r}; known: {', '.join(QUANTS)}")
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    if name not in ZOO:
        raise KeyError(f"unknown zoo family {name!r}; known: {', '.join(ZOO)}")
    spec = ZOO[name]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    special = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
        # Exactly the tokenizer's size: ids it cannot decode would be generated otherwise.
        "vocab_size": len(tokenizer),
    }
    config = _make_config(spec, special, overrides)
    # Per-family seed, so families with the same shapes do not get identical weights.
    family_seed = seed + int(hashlib.sha256(name.encode()).hexdigest()[:6], 16)
    torch.manual_seed(family_seed)
    generator = torch.Generator().manual_seed(family_seed)
    if spec.wrapper is not None:  # the whole multimodal model, so that its checkpoint has the vision tower
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _shape_routing(model, spec, generator)
    model.eval()
    model.save_pretrained(out, max_shard_size="1GB")
    _ensure_saved_tensors(model, out)
    _use_hub_tensor_names(out, spec.model_type)
    _fuse_experts_on_disk(out)
    _add_mtp_module(out, generator)
    _use_hub_config_keys(out, spec.model_type)
    tokenizer.save_pretrained(out)
    GenerationConfig(
        bos_token_id=special["bos"],
        eos_token_id=[special["eos"], tokenizer.convert_tokens_to_ids("<|im_end|>")],
        pad_token_id=special["pad"],
        do_sample=False,
    ).save_pretrained(out)
    record: dict[str, Any] = {"family": name, "seed_model": spec.seed_model, "seed": seed}
    if quant is not None:
        record["quantisation"] = quantise_model(out, quant)
    (out / "zoo.json").write_text(json.dumps(record, indent=2))
    return out


def zoo_template(family: str) -> str:
    """The zoo model that mirrors a family (the one named after it)."""
    if family in ZOO and ZOO[family].model_type == family:
        return family
    found = next((name for name, spec in ZOO.items() if spec.model_type == family), None)
    if found is None:
        raise KeyError(f"no zoo model of family {family!r}; zoo families: {', '.join(sorted(ZOO))}")
    return found


def add_mtp_layers(model_dir: str | Path, count: int = 1, seed: int = SEED) -> list[str]:
    """Append `count` multi-token-prediction layers, stored as GLM-4.5 and DeepSeek-V3 store theirs.

    The hub checkpoints of those families keep their MTP modules as extra decoder layers
    (`model.layers.<num_hidden_layers + i>.*`: a full decoder layer plus `eh_proj`, `enorm`, `hnorm`,
    `shared_head.{norm,head}`), which transformers and vLLM skip when they build the model. Here each
    is a seeded copy-shaped decoder layer; the config gets `num_nextn_predict_layers`. Returns the new keys.
    """
    import torch
    from safetensors.torch import load_file, save_file

    out = Path(model_dir)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    layers, hidden = int(config["num_hidden_layers"]), int(config["hidden_size"])
    single = out / "model.safetensors"
    tensors = load_file(str(single))
    generator = torch.Generator().manual_seed(seed)
    template = f"model.layers.{layers - 1}."
    added: dict[str, torch.Tensor] = {}
    for i in range(count):
        prefix = f"model.layers.{layers + i}."
        for key, tensor in tensors.items():
            if not key.startswith(template):
                continue
            if tensor.dtype in (torch.float32, torch.bfloat16, torch.float16):
                noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * 0.02
                tensor = (tensor.float() + noise).to(tensor.dtype)
            added[prefix + key[len(template):]] = tensor.clone().contiguous()  # quantised tensors: copied as they are
        added[prefix + "eh_proj.weight"] = torch.randn(hidden, 2 * hidden, generator=generator) * 0.02
        for name in ("enorm.weight", "hnorm.weight", "shared_head.norm.weight"):
            added[prefix + name] = torch.ones(hidden)
        added[prefix + "shared_head.head.weight"] = tensors["lm_head.weight"].clone()
    save_file({**tensors, **added}, str(single), metadata={"format": "pt"})
    config["num_nextn_predict_layers"] = count
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return sorted(added)


def build_zoo(root: str | Path, families: list[str] | None = None, seed: int = SEED,
              quant: str | None = None) -> dict[str, Path]:
    """Build several zoo models under root/<family> (root/<family>-<quant> when quantised)."""
    names = families or list(ZOO)
    return {name: build_model(name, Path(root) / variant_name(name, quant), seed=seed, quant=quant)
            for name in names}


def variant_name(family: str, quant: str | None = None) -> str:
    """Directory name of a zoo model: the family, with the quantisation appended ("qwen3_moe-fp8")."""
    return family if quant is None else f"{family}-{quant}"


def checkpoint_digest(model_dir: str | Path) -> str:
    """sha256 over the checkpoint's tensor files, to check determinism."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="write tiny models of the seed families")
    build.add_argument("dir", help="output directory; each family goes to DIR/<family>")
    build.add_argument("--family", action="append", choices=list(ZOO),
                       help="family to build (repeatable; default: all)")
    build.add_argument("--seed", type=int, default=SEED)
    build.add_argument("--quant", choices=list(QUANTS),
                       help="store the model quantised: fp8 (block FP8, as Qwen3-Coder-480B-FP8), w4a16 "
                            "(routed experts int4, compressed-tensors, as Kimi-K2 W4A16) or mxfp4 (gpt-oss's fused "
                            "experts); goes to DIR/<family>-<quant>")
    sub.add_parser("list", help="list the zoo families")
    args = parser.parse_args(argv)
    if args.command == "list":
        for spec in ZOO.values():
            print(f"{spec.name:18s} {spec.model_type:14s} {spec.seed_model}")
        for quant in QUANTS.values():
            print(f"--quant {quant.name:10s} {quant.format:14s} {quant.mirrors}")
        return 0
    for name in args.family or list(ZOO):
        path = build_model(name, Path(args.dir) / variant_name(name, args.quant), seed=args.seed, quant=args.quant)
        print(f"built {variant_name(name, args.quant):18s} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
