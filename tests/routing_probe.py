"""Count the experts each MoE layer of an HF model selects, from the model's own forward.

Test helper only: hooks the experts call, `experts(hidden, top_k_index, top_k_weights)`,
which every family but Llama-4 uses; for Llama-4 it reads the router's scores
(non-zero exactly for the selected experts).
"""

from __future__ import annotations

import torch


def expert_counts(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per MoE layer name, how many real (non-padding) tokens chose each expert."""
    keep = attention_mask.reshape(-1).bool()
    counts: dict[str, torch.Tensor] = {}
    handles = []

    def fused_hook(name, n_experts):
        def hook(module, args, kwargs):
            index = args[1] if len(args) > 1 else kwargs["top_k_index"]
            selected = index.reshape(keep.shape[0], -1)[keep]
            counts[name] = counts.get(name, 0) + torch.bincount(selected.reshape(-1), minlength=n_experts)
        return hook

    def llama4_hook(name):
        def hook(module, args, output):
            scores = output[0].reshape(keep.shape[0], -1)[keep]
            counts[name] = counts.get(name, 0) + (scores > 0).sum(0)
        return hook

    for name, module in model.named_modules():
        if name.endswith("mlp.experts") and hasattr(module, "gate_up_proj"):
            n_experts = module.gate_up_proj.shape[0]
            handles.append(module.register_forward_pre_hook(fused_hook(name, n_experts), with_kwargs=True))
        elif name.endswith("feed_forward.router"):
            handles.append(module.register_forward_hook(llama4_hook(name)))
    try:
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        for handle in handles:
            handle.remove()
    return counts
