"""Mixtral: softmax over the top-k logits (equivalently, renormalised top-k softmax)."""

from harness.archs.base import MoEArch


class MixtralArch(MoEArch):
    model_type = "mixtral"
    expert_count_key = "num_local_experts"
    # On the hub (and in vLLM) Mixtral keeps its original names.
    hub_block_attr = "block_sparse_moe"
    hub_expert_names = {"gate": "w1", "up": "w3", "down": "w2"}
    expert_size_key = "intermediate_size"
