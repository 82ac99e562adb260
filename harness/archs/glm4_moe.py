"""GLM-4.5: sigmoid scores, correction bias for selection, group-limited top-k,
renormalisation and `routed_scaling_factor`; one shared expert; first layers dense."""

from harness.archs.base import MoEArch
from harness.archs.layout import Shapes


class Glm4MoeArch(MoEArch):
    model_type = "glm4_moe"
    expert_count_key = "n_routed_experts"
    shared_attr = "shared_experts"
    correction_bias_key = "mlp.gate.e_score_correction_bias"
    grouped_router = True
    leading_dense_key = "first_k_dense_replace"
    mtp_layers_key = "num_nextn_predict_layers"
    shared_count_key = "n_shared_experts"
    structure_keys = ("n_group", "topk_group", "n_shared_experts", "first_k_dense_replace", "routed_scaling_factor",
                      "norm_topk_prob", "num_nextn_predict_layers", "topk_method", "scoring_func", "moe_layer_freq")

    def moe_layer_indices(self) -> list[int]:
        """After the `first_k_dense_replace` dense layers, every `moe_layer_freq`-th layer."""
        c = self.config
        freq, first = c.get("moe_layer_freq", 1) or 1, c.get("first_k_dense_replace", 0)
        return [i for i in range(c["num_hidden_layers"]) if i >= first and i % freq == 0]

    def attention_shapes(self, i: int, p: str) -> Shapes:
        out = super().attention_shapes(i, p)
        return {**out, **self.head_norm_shapes(p)} if self.config.get("use_qk_norm") else out
