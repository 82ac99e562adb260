"""Super experts: the few experts whose outputs carry extreme activation outliers.

Su et al. ("Unveiling Super Experts in Mixture-of-Experts LLMs", 2025) find that a
handful of experts produce rare but huge entries in their down_proj output, that those
outliers feed the model's massive activations and attention sinks, and that pruning even
three of them breaks a model. The rule is the paper code's (`get_super_expert_indices` in
CerebrasResearch/reap), over the whole model (all MoE layers pooled, since super experts
sit in a few layers only), on `max_act` (the signed largest entry of the expert's output
over routed calibration tokens):

    super(j)  <=>  max_act[j] > quantile(all max_act, q)  and  max_act[j] > fraction * max(all max_act)

with q = 0.995 and fraction = 0.1, and only experts of the first 75 % of the MoE layers
(int(0.75 * number of MoE layers), in layer order) can be super; the thresholds are computed
over all layers. `layers="all"` considers every layer, `activation="absolute"` uses
`max_abs_act` (the largest |entry|) instead: the signed maximum misses an expert whose
outliers are negative, which is the reason to keep the variant. An expert never routed
(count 0) has no observed output and is never super.
"""

from __future__ import annotations

import torch

from harness.calibration.statistics import CalibrationStatistics

LAYER_RULES = ("first_75", "all")
ACTIVATIONS = ("signed", "absolute")


def super_experts(stats: CalibrationStatistics, quantile: float = 0.995, max_fraction: float = 0.1,
                  layers: str = "first_75", activation: str = "signed") -> dict[int, list[int]]:
    """Layer index -> its super experts (ascending); layers without any are left out."""
    if not 0.0 < quantile < 1.0 or not 0.0 < max_fraction <= 1.0:
        raise ValueError(f"need 0 < quantile < 1 and 0 < max_fraction <= 1, got {quantile}, {max_fraction}")
    if layers not in LAYER_RULES or activation not in ACTIVATIONS:
        raise ValueError(f"layers must be one of {LAYER_RULES} and activation one of {ACTIVATIONS}")
    if not stats.layers:
        return {}
    name = "max_act" if activation == "signed" else "max_abs_act"
    peaks = {i: getattr(layer, name).double() for i, layer in stats.layers.items()}
    values = torch.cat(list(peaks.values()))
    if not torch.isfinite(values).all():
        raise ValueError("max_act holds NaN or infinite values: the calibration statistics are broken")
    top = values.max().item()
    if top <= 0.0:
        return {}
    threshold = max(torch.quantile(values, quantile).item(), max_fraction * top)
    ordered = sorted(stats.layers)
    considered = ordered if layers == "all" else ordered[:int(len(ordered) * 0.75)]
    found = {}
    for index in considered:
        layer = stats.layers[index]
        chosen = [j for j in range(layer.num_experts)
                  if peaks[index][j].item() > threshold and layer.count[j].item() > 0]
        if chosen:
            found[index] = chosen
    return found
