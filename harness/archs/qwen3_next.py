"""Qwen3-Next (Qwen3-Next-80B-A3B, Qwen3-Coder-Next): softmax top-k (renormalised when `norm_topk_prob`), plus one
shared expert whose output the block scales by a sigmoid gate; hybrid attention (Gated DeltaNet linear attention
in three of every four layers). Routed experts per expert on disk (`mlp.experts.{j}.{gate,up,down}_proj`),
fused in the transformers module.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.archs.base import MoEArch, MoELayer
from harness.archs.layout import Shapes
from harness.archs.qwen3_moe import sparse_step_layers


class GatedSharedExpert(nn.Module):
    """The shared expert as the block applies it: sigmoid(shared_expert_gate(x)) * shared_expert(x).

    Not part of the model: a view that lets `MoELayer.shared` return what the block adds to the routed output.
    """

    def __init__(self, expert: nn.Module, gate: nn.Module):
        super().__init__()
        self.expert, self.gate = expert, gate

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate(hidden)) * self.expert(hidden)


class Qwen3NextArch(MoEArch):
    model_type = "qwen3_next"
    expert_count_key = "num_experts"
    shared_attr = "shared_expert"
    structure_keys = ("norm_topk_prob", "decoder_sparse_step", "mlp_only_layers")
    # The released checkpoints store a multi-token-prediction module (one decoder layer with its own routed experts)
    # under `mtp.`, which the causal LM skips; compressed checkpoints drop it (vLLM serves them without MTP
    # speculative decoding).
    extra_module_prefixes = ("mtp.",)

    def moe_layer(self, layer_index: int, decoder_layer: nn.Module, prefix: str = "") -> MoELayer | None:
        layer = super().moe_layer(layer_index, decoder_layer, prefix)
        if layer is not None:
            layer.shared = GatedSharedExpert(layer.block.shared_expert, layer.block.shared_expert_gate)
        return layer

    # -- stored tensors ---------------------------------------------------------------------------------------
    # The config key of the MTP module's decoder layers (the hub's config.json has it; transformers ignores it).
    mtp_module_key = "mtp_num_hidden_layers"

    def moe_layer_indices(self) -> list[int]:
        return sparse_step_layers(self.config)

    def layer_types(self) -> list[str]:
        """Each decoder layer's token mixer: "linear_attention" or "full_attention" (every
        `full_attention_interval`-th layer, as the config's own default has it)."""
        c = self.config
        if c.get("layer_types"):
            return list(c["layer_types"])
        interval = c.get("full_attention_interval", 4)
        return ["full_attention" if (i + 1) % interval == 0 else "linear_attention"
                for i in range(c["num_hidden_layers"])]

    def attention_shapes(self, i: int, p: str) -> Shapes:
        """Full attention (gated: q_proj also yields the output gate; per-head q/k norms) or Gated DeltaNet."""
        c = self.config
        if i >= c["num_hidden_layers"] or self.layer_types()[i] == "full_attention":
            H, nh, hd = c["hidden_size"], c["num_attention_heads"], self.head_dim()
            out = super().attention_shapes(i, p)
            out[p + "self_attn.q_proj.weight"] = (2 * nh * hd, H)
            return {**out, **self.head_norm_shapes(p)}
        return self.linear_attention_shapes(p + "linear_attn.")

    def linear_attention_shapes(self, a: str) -> Shapes:
        c = self.config
        H, nk, nv = c["hidden_size"], c["linear_num_key_heads"], c["linear_num_value_heads"]
        key, value = nk * c["linear_key_head_dim"], nv * c["linear_value_head_dim"]
        conv = 2 * key + value
        return {a + "in_proj_qkvz.weight": (2 * key + 2 * value, H), a + "in_proj_ba.weight": (2 * nv, H),
                a + "conv1d.weight": (conv, 1, c["linear_conv_kernel_dim"]), a + "dt_bias": (nv,), a + "A_log": (nv,),
                a + "norm.weight": (c["linear_value_head_dim"],), a + "out_proj.weight": (H, value)}

    def feed_forward_shapes(self, p: str, moe: bool) -> Shapes:
        """The MoE block plus the shared expert's sigmoid gate; a dense layer is an MLP of `intermediate_size`."""
        out = super().feed_forward_shapes(p, moe)
        if moe:
            out[p + "mlp.shared_expert_gate.weight"] = (1, self.config["hidden_size"])
        return out

    def shared_expert_size(self) -> int:
        return int(self.config["shared_expert_intermediate_size"])

    def extra_module_shapes(self, wrapped: bool) -> Shapes:
        """The MTP module under `mtp.` when the config declares one: an input projection of [embedding; hidden],
        three norms and full-attention MoE decoder layers."""
        c = self.config
        H, L = c["hidden_size"], c["num_hidden_layers"]
        layers = int(c.get(self.mtp_module_key) or 0)
        if not layers:
            return {}
        out: Shapes = {"mtp.fc.weight": (H, 2 * H)}
        out.update({f"mtp.{norm}.weight": (H,) for norm in ("pre_fc_norm_hidden", "pre_fc_norm_embedding", "norm")})
        for j in range(layers):
            out.update(self.decoder_layer_shapes(L + j, f"mtp.layers.{j}.", moe=True))
        return out
