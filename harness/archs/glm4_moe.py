"""GLM-4.5: sigmoid scores, correction bias for selection, group-limited top-k,
renormalisation and `routed_scaling_factor`; one shared expert; first layers dense."""

from harness.archs.base import MoEArch


class Glm4MoeArch(MoEArch):
    model_type = "glm4_moe"
    expert_count_key = "n_routed_experts"
    shared_attr = "shared_experts"
    correction_bias_key = "mlp.gate.e_score_correction_bias"
    grouped_router = True
    leading_dense_key = "first_k_dense_replace"
    mtp_layers_key = "num_nextn_predict_layers"
    structure_keys = ("n_group", "topk_group", "n_shared_experts", "first_k_dense_replace", "routed_scaling_factor",
                      "norm_topk_prob", "num_nextn_predict_layers", "topk_method", "scoring_func", "moe_layer_freq")
