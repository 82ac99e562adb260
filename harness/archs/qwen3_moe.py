"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-Coder-480B): softmax top-k, optional renormalisation."""

from harness.archs.base import MoEArch


class Qwen3MoeArch(MoEArch):
    model_type = "qwen3_moe"
    expert_count_key = "num_experts"
    expert_count_aliases = ("num_local_experts",)
    structure_keys = ("norm_topk_prob", "decoder_sparse_step", "mlp_only_layers")

    @property
    def num_experts(self) -> int:
        # transformers 5.x writes num_local_experts; the hub configs say num_experts.
        return int(self.config.get("num_experts") or self.config["num_local_experts"])
