"""Qwen3.5-MoE (Qwen3.5-35B-A3B, Qwen3.5-397B-A17B): softmax top-k, always renormalised, plus one shared
expert whose output is scaled by a sigmoid gate; hybrid attention (Gated DeltaNet linear attention in three
of every four layers); every decoder layer is MoE.

The released checkpoints are the multimodal wrapper (`model_type: qwen3_5_moe`, text settings under
`text_config`, a vision tower under `model.visual.`) with the language model's tensors under
`model.language_model.` and the routed experts stored fused, as the module holds them: `gate_up_proj`
[E, 2I, H] and `down_proj` [E, H, I] under `mlp.experts.`. transformers (5.19) loads that checkpoint with
`AutoModelForCausalLM` as `Qwen3_5MoeForCausalLM`, whose modules are `model.layers.N` (the vision tower is
skipped), and writes `model.language_model.` keys again when it saves one. So the module paths here are
the causal LM's and the key prefixes the checkpoint's.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from harness.archs.layout import Shapes
from harness.archs.qwen3_next import Qwen3NextArch


class Qwen35MoeArch(Qwen3NextArch):
    """Qwen3-Next's block (gated shared expert, softmax router) without `norm_topk_prob` (always renormalised),
    in the multimodal wrapper's checkpoint layout."""

    model_type = "qwen3_5_moe_text"
    wrapper_model_type = "qwen3_5_moe"  # Qwen3_5MoeForConditionalGeneration's config.json
    hub_fused_expert_names = {"gate_up": "gate_up_proj", "down": "down_proj"}  # rows as the module's
    # Where the language model's tensors live in the checkpoint (the wrapper's prefix).
    hub_model_prefix = "model.language_model."
    # Module paths of Qwen3_5MoeForCausalLM (what AutoModelForCausalLM builds from either config).
    embedding_path = "model.embed_tokens"
    layers_path = "model.layers"
    # Routing has no settings beyond the expert count and top-k (the top-k weights are always renormalised).
    structure_keys = ()

    @property
    def embedding_key(self) -> str:
        return f"{self.hub_model_prefix}embed_tokens.weight"

    def layer_prefix(self, index: int) -> str:
        """The checkpoint key prefix of decoder layer `index` (the wrapper's, not the module path)."""
        return f"{self.hub_model_prefix}layers.{index}."

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        inner = model.model if hasattr(model, "model") else model
        inner = getattr(inner, "language_model", inner)  # the multimodal model, if loaded as such
        return inner.layers

    @classmethod
    def leading_dense_layers(cls, config: dict[str, Any]) -> int:
        return 0  # every decoder layer has the sparse MoE block

    # -- stored tensors ---------------------------------------------------------------------------------------
    def model_key_prefixes(self, wrapped: bool) -> tuple[str, str]:
        return self.hub_model_prefix, ""

    def moe_layer_indices(self) -> list[int]:
        return list(range(self.config["num_hidden_layers"]))

    def linear_attention_shapes(self, a: str) -> Shapes:
        """Gated DeltaNet with its input projection split in four (qkv, z, b, a) rather than Qwen3-Next's two."""
        c = self.config
        H, nk, nv = c["hidden_size"], c["linear_num_key_heads"], c["linear_num_value_heads"]
        key, value = nk * c["linear_key_head_dim"], nv * c["linear_value_head_dim"]
        out = {k: v for k, v in super().linear_attention_shapes(a).items() if ".in_proj_" not in k}
        return {**out, a + "in_proj_qkv.weight": (2 * key + value, H), a + "in_proj_z.weight": (value, H),
                a + "in_proj_b.weight": (nv, H), a + "in_proj_a.weight": (nv, H)}
