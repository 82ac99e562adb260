"""ERNIE-4.5-MoE: softmax router whose *selection* adds a correction bias; shared experts."""

from harness.archs.base import MoEArch


class Ernie45MoeArch(MoEArch):
    model_type = "ernie4_5_moe"
    expert_count_key = "moe_num_experts"
    top_k_key = "moe_k"
    shared_attr = "shared_experts"
    correction_bias_key = "mlp.moe_statics.e_score_correction_bias"

    def module_key(self, hub_key: str) -> str:
        # The hub keeps the bias on the block; transformers moves it into the router.
        return hub_key.replace("mlp.moe_statics.", "mlp.gate.moe_statics.")
