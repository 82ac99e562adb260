"""GLM-4.7-Flash (`glm4_moe_lite`): GLM-4.5's router (sigmoid scores, a correction bias that only selects,
group-limited top-k, renormalised and scaled by `routed_scaling_factor`) and shared expert, with DeepSeek's
multi-head latent attention; the first layer dense; one MTP layer stored after the decoder stack.

transformers (5.19) decides which layers are sparse from `mlp_layer_types` (its default: the first dense, the rest
sparse), vLLM from `first_k_dense_replace` and `moe_layer_freq` as for GLM-4.5; the release's config.json has the
latter, and the two agree on it. Experts are per expert on disk, fused in the module, as for GLM-4.5.
"""

from __future__ import annotations

from typing import Any

from harness.archs.deepseek_v3 import DeepseekV3Arch


class Glm4MoeLiteArch(DeepseekV3Arch):
    model_type = "glm4_moe_lite"

    @classmethod
    def leading_dense_layers(cls, config: dict[str, Any]) -> int:
        types = config.get("mlp_layer_types")
        if types:
            return next((i for i, kind in enumerate(types) if kind == "sparse"), len(types))
        return super().leading_dense_layers(config) if config.get(cls.leading_dense_key) is not None else 1

    def moe_layer_indices(self) -> list[int]:
        """The layers transformers makes sparse: `mlp_layer_types` where the config has it."""
        c = self.config
        types = c.get("mlp_layer_types")
        if types:
            return [i for i, kind in enumerate(types) if kind == "sparse"]
        first, freq = self.leading_dense_layers(c), c.get("moe_layer_freq", 1) or 1
        return [i for i in range(c["num_hidden_layers"]) if i >= first and i % freq == 0]
