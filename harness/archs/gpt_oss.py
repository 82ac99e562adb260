"""gpt-oss (openai/gpt-oss-120b, -20b): a biased linear router whose top-k logits are softmaxed (over the
selected experts only); experts with biases and a clamped SwiGLU, fused and input-major.

In transformers (and the bf16 hub layout) layer experts are `gate_up_proj` [E, H, 2I] with the gate and
up columns interleaved (gate = [..., 0::2], up = [..., 1::2]), `gate_up_proj_bias` [E, 2I], `down_proj`
[E, I, H], `down_proj_bias` [E, H]. The released checkpoints store the two weights as MXFP4
(`gate_up_proj_blocks` / `_scales` [E, 2I, ...], output-major; `harness.checkpoint.quantisation`), the biases in
bf16. The expert computes, with a = swiglu_alpha and l = swiglu_limit,

    g = min(x W_g + b_g, l),  u = clamp(x W_u + b_u, -l, l),  f(x) = ((u + 1) * g * sigmoid(a g)) W_d + b_d.

The block calls `experts(hidden, router_indices, router_scores)` like the fused families, so the base
instrumentation sees the true routing (bias included, softmax over the k selected logits).
"""

from __future__ import annotations

import torch

from harness.archs.base import ExpertWeights, MoEArch, MoELayer
from harness.archs.layout import Shapes
from harness.checkpoint.quantisation import MXFP4_BLOCKS, MXFP4_SCALES, dequantise_mxfp4, quantise_mxfp4

_WEIGHTS = ("gate_up_proj", "down_proj")
_BIASES = ("gate_up_proj_bias", "down_proj_bias")


class GptOssArch(MoEArch):
    model_type = "gpt_oss"
    expert_count_key = "num_local_experts"
    router_attr = "router"
    hub_fused_expert_names = {"gate_up": "gate_up_proj", "down": "down_proj"}
    structure_keys = ("sliding_window", "swiglu_limit", "swiglu_alpha")
    expert_size_key = "intermediate_size"
    attention_output_bias = True
    # vLLM renders every gpt-oss chat request with the harmony encoding, whatever tokenizer the checkpoint ships;
    # a rehearsal stand-in's vocabulary cannot hold those ids, so its chat tasks are listed as not rehearsed.
    rehearsal_chat_limit = ("vLLM renders gpt-oss chat requests with the harmony encoding (o200k token ids), which a "
                            "stand-in's tiny vocabulary cannot hold (vLLM: 'Token id 200008 is out of vocabulary'); "
                            "chat tasks run on the real model only")

    # -- canonical view ------------------------------------------------------------------------------
    def expert_weights(self, layer: MoELayer, j: int) -> ExpertWeights:
        e = layer.experts
        return self._split(e.gate_up_proj[j], e.gate_up_proj_bias[j], e.down_proj[j], e.down_proj_bias[j])

    @staticmethod
    def _split(gate_up: torch.Tensor, gate_up_bias: torch.Tensor, down: torch.Tensor, down_bias: torch.Tensor
               ) -> ExpertWeights:
        """One expert from its input-major rows: gate_up [H, 2I] (interleaved), down [I, H]."""
        return ExpertWeights(gate=gate_up[:, 0::2].T, up=gate_up[:, 1::2].T, down=down.T,
                             gate_bias=gate_up_bias[0::2], up_bias=gate_up_bias[1::2], down_bias=down_bias)

    def split_fused_expert(self, gate_up: torch.Tensor, down: torch.Tensor) -> ExpertWeights:
        inter = gate_up.shape[1] // 2
        zeros = gate_up.new_zeros(2 * inter)
        return self._split(gate_up, zeros, down, down.new_zeros(down.shape[1]))

    def join_fused_expert(self, expert: ExpertWeights) -> tuple[torch.Tensor, torch.Tensor]:
        gate_up = torch.stack([expert.gate.T, expert.up.T], dim=-1).reshape(expert.gate.shape[1], -1)
        return gate_up, expert.down.T

    def expert_forward(self, layer: MoELayer, j: int, x: torch.Tensor) -> torch.Tensor:
        """f_j(x) exactly as GptOssExperts computes it (its own clamped SwiGLU), bias included."""
        e = layer.experts
        gate_up = x @ e.gate_up_proj[j] + e.gate_up_proj_bias[j]
        return e._apply_gate(gate_up) @ e.down_proj[j] + e.down_proj_bias[j]

    # -- fused tensors on disk: bf16, or MXFP4 weights beside bf16 biases -----------------------------------
    def fused_tensor_names(self, stored: set[str]) -> list[str] | None:
        plain = set(_WEIGHTS + _BIASES)
        mxfp4 = {f"{w}{s}" for w in _WEIGHTS for s in (MXFP4_BLOCKS, MXFP4_SCALES)} | set(_BIASES)
        return sorted(stored) if stored in (plain, mxfp4) else None

    def fused_expert(self, stored: dict[str, torch.Tensor], j: int) -> ExpertWeights:
        def weight(name: str) -> torch.Tensor:
            if name in stored:
                return stored[name][j]
            blocks, scales = stored[f"{name}{MXFP4_BLOCKS}"][j], stored[f"{name}{MXFP4_SCALES}"][j]
            return dequantise_mxfp4(blocks, scales).T  # stored output-major

        return self._split(weight("gate_up_proj"), stored["gate_up_proj_bias"][j], weight("down_proj"),
                           stored["down_proj_bias"][j])

    def fused_rows(self, expert: ExpertWeights, stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        gate_up, down = self.join_fused_expert(expert)
        gate_up_bias = torch.stack([expert.gate_bias, expert.up_bias], dim=-1).reshape(-1)
        rows = {"gate_up_proj_bias": gate_up_bias.to(stored["gate_up_proj_bias"].dtype),
                "down_proj_bias": expert.down_bias.to(stored["down_proj_bias"].dtype)}
        for name, value in (("gate_up_proj", gate_up), ("down_proj", down)):
            if name in stored:
                rows[name] = value.to(stored[name].dtype)
            else:
                rows[f"{name}{MXFP4_BLOCKS}"], rows[f"{name}{MXFP4_SCALES}"] = quantise_mxfp4(value.T)
        return rows

    # -- stored tensors (unquantised; the MXFP4 blocks and scales are the inventory's) -------------------------
    def attention_shapes(self, i: int, p: str) -> Shapes:
        return {**super().attention_shapes(i, p), p + "self_attn.sinks": (self.config["num_attention_heads"],)}

    def feed_forward_shapes(self, p: str, moe: bool) -> Shapes:
        """The biased router and the fused, input-major experts with their biases (every layer is MoE)."""
        c, f = self.config, p + "mlp."
        H, inter, E = c["hidden_size"], c["intermediate_size"], self.num_experts
        return {f + "router.weight": (E, H), f + "router.bias": (E,), f + "experts.gate_up_proj": (E, H, 2 * inter),
                f + "experts.gate_up_proj_bias": (E, 2 * inter), f + "experts.down_proj": (E, inter, H),
                f + "experts.down_proj_bias": (E, H)}
