"""Llama-4 (Scout): top-1 sigmoid router whose score scales the expert *input*; a shared
expert; experts fused as `gate_up_proj` [E, H, 2I] and `down_proj` [E, I, H].

transformers runs every expert on every token (unselected ones on a zero input); the
instrumented block computes only the routed tokens, with the same result.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.archs.base import ExpertWeights, MoEArch, MoELayer, Routing, replace_forward
from harness.archs.layout import Shapes, mlp_shapes


class Llama4TextArch(MoEArch):
    model_type = "llama4_text"
    expert_count_key = "num_local_experts"
    block_attr = "feed_forward"
    router_attr = "router"
    shared_attr = "shared_expert"
    scales_input = True
    hub_fused_expert_names = {"gate_up": "gate_up_proj", "down": "down_proj"}
    wrapper_model_type = "llama4"  # the multimodal Llama4ForConditionalGeneration config
    structure_keys = ("interleave_moe_layer_step", "moe_layers")
    attention_output_bias = True

    def split_fused_expert(self, gate_up: torch.Tensor, down: torch.Tensor) -> ExpertWeights:
        """Llama-4 stores experts input-major, in the module and on disk: gate_up [H, 2I], down [I, H]."""
        inter = gate_up.shape[1] // 2
        return ExpertWeights(gate=gate_up[:, :inter].T, up=gate_up[:, inter:].T, down=down.T)

    def join_fused_expert(self, expert: ExpertWeights) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([expert.gate.T, expert.up.T], dim=1), expert.down.T

    def route(self, layer: MoELayer, hidden: torch.Tensor) -> Routing:
        scores, logits = layer.router(hidden)
        weights, index = scores.topk(self.top_k, dim=-1)  # unselected experts score exactly 0
        return Routing(index=index, weights=weights, logits=logits)

    def router_logits_from_output(self, output: Any) -> torch.Tensor:
        return output[1]

    def instrument(self, layer: MoELayer, record) -> Any:
        block = layer.block

        def forward(hidden_states):
            hidden = hidden_states.reshape(-1, block.hidden_dim)
            routing = self.route(layer, hidden)
            routed = record(layer, hidden, routing.index, routing.weights, scale_input=True)
            out = block.shared_expert(hidden)
            out.add_(routed)
            return out, routing.logits

        return replace_forward(block, forward)

    # -- stored tensors ---------------------------------------------------------------------------------------
    def moe_layer_indices(self) -> list[int]:
        """`moe_layers` when the config lists them, else every `interleave_moe_layer_step`-th layer."""
        c = self.config
        if c.get("moe_layers") is not None:
            return list(c["moe_layers"])
        step = c.get("interleave_moe_layer_step", 1) or 1
        return [i for i in range(c["num_hidden_layers"]) if (i + 1) % step == 0]

    def feed_forward_shapes(self, p: str, moe: bool) -> Shapes:
        """A dense MLP of `intermediate_size_mlp`, or the router, fused input-major experts and the shared expert."""
        c, f = self.config, p + "feed_forward."
        H, inter = c["hidden_size"], c["intermediate_size"]
        if not moe:
            return mlp_shapes(f, c.get("intermediate_size_mlp") or inter, H)
        E = self.num_experts
        return {f + "router.weight": (E, H), f + "experts.gate_up_proj": (E, H, 2 * inter),
                f + "experts.down_proj": (E, inter, H), **mlp_shapes(f + "shared_expert.", inter, H)}
