"""ERNIE-4.5-MoE: softmax router whose *selection* adds a correction bias; shared experts."""

from harness.archs.base import MoEArch


class Ernie45MoeArch(MoEArch):
    model_type = "ernie4_5_moe"
    expert_count_key = "moe_num_experts"
    top_k_key = "moe_k"
    shared_attr = "shared_experts"
    correction_bias_key = "mlp.moe_statics.e_score_correction_bias"
    leading_dense_key = "moe_layer_start_index"
    structure_keys = ("moe_num_shared_experts", "moe_layer_start_index", "moe_layer_end_index", "moe_layer_interval",
                      "moe_norm_min")

    def module_key(self, hub_key: str) -> str:
        # The hub keeps the bias on the block; transformers moves it into the router.
        return hub_key.replace("mlp.moe_statics.", "mlp.gate.moe_statics.")
