"""ERNIE-4.5-MoE: softmax router whose *selection* adds a correction bias; shared experts."""

from harness.archs.base import MoEArch


class Ernie45MoeArch(MoEArch):
    model_type = "ernie4_5_moe"
    expert_count_key = "moe_num_experts"
    top_k_key = "moe_k"
    shared_attr = "shared_experts"
    correction_bias_key = "mlp.moe_statics.e_score_correction_bias"
    leading_dense_key = "moe_layer_start_index"
    shared_count_key = "moe_num_shared_experts"
    attention_output_bias = True
    structure_keys = ("moe_num_shared_experts", "moe_layer_start_index", "moe_layer_end_index", "moe_layer_interval",
                      "moe_norm_min")

    def module_key(self, hub_key: str) -> str:
        # The hub keeps the bias on the block; transformers moves it into the router.
        return hub_key.replace("mlp.moe_statics.", "mlp.gate.moe_statics.")

    def moe_layer_indices(self) -> list[int]:
        """Every `moe_layer_interval`-th layer from `moe_layer_start_index` to `moe_layer_end_index` (-1: the last)."""
        c, last = self.config, self.config["num_hidden_layers"] - 1
        start, interval = c.get("moe_layer_start_index", 0), c.get("moe_layer_interval", 1) or 1
        end = c.get("moe_layer_end_index")
        end = last if end is None or end < 0 else end
        return [i for i in range(last + 1) if start <= i <= end and (i - start) % interval == 0]

    def correction_bias_shape(self) -> tuple[int, ...]:
        return (1, self.num_experts)  # stored as a one-row table
