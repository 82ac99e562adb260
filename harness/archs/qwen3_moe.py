"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-Coder-480B): softmax top-k, optional renormalisation."""

from harness.archs.base import MoEArch
from harness.archs.layout import Shapes


def sparse_step_layers(config: dict) -> list[int]:
    """Qwen's MoE layers: every `decoder_sparse_step`-th layer, less the dense `mlp_only_layers`."""
    step, dense = config.get("decoder_sparse_step", 1) or 1, set(config.get("mlp_only_layers") or [])
    return [i for i in range(config["num_hidden_layers"]) if i not in dense and (i + 1) % step == 0]


class Qwen3MoeArch(MoEArch):
    model_type = "qwen3_moe"
    expert_count_key = "num_experts"
    expert_count_aliases = ("num_local_experts",)
    structure_keys = ("norm_topk_prob", "decoder_sparse_step", "mlp_only_layers")

    @property
    def num_experts(self) -> int:
        # transformers 5.x writes num_local_experts; the hub configs say num_experts.
        return int(self.config.get("num_experts") or self.config["num_local_experts"])

    def moe_layer_indices(self) -> list[int]:
        return sparse_step_layers(self.config)

    def attention_shapes(self, i: int, p: str) -> Shapes:
        return {**super().attention_shapes(i, p), **self.head_norm_shapes(p)}
