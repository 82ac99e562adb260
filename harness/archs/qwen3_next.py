"""Qwen3-Next (Qwen3-Next-80B-A3B, Qwen3-Coder-Next): softmax top-k (renormalised when `norm_topk_prob`), plus one
shared expert whose output the block scales by a sigmoid gate; hybrid attention (Gated DeltaNet linear attention
in three of every four layers). Routed experts per expert on disk (`mlp.experts.{j}.{gate,up,down}_proj`),
fused in the transformers module.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.archs.base import MoEArch, MoELayer


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
