"""Super experts: the few experts whose outputs carry extreme activation outliers.

Su et al. ("Unveiling Super Experts in Mixture-of-Experts LLMs", 2025) find that a
handful of experts produce rare but huge entries in their down_proj output, that those
outliers feed the model's massive activations and attention sinks, and that pruning even
three of them breaks a model. Our rule, over the whole model (all MoE layers pooled,
since super experts sit in a few layers only), on `max_act` (the largest |entry| of the
expert's output over routed calibration tokens):

    super(j)  <=>  max_act[j] > quantile(all max_act, q)  and  max_act[j] > fraction * max(all max_act)

with q = 0.995 and fraction = 0.1 by default. An expert never routed (count 0) has no
observed output and is never super.
"""

from __future__ import annotations

import torch

from harness.calibration.statistics import CalibrationStatistics


def super_experts(stats: CalibrationStatistics, quantile: float = 0.995, max_fraction: float = 0.1
                  ) -> dict[int, list[int]]:
    """Layer index -> its super experts (ascending); layers without any are left out."""
    if not 0.0 < quantile < 1.0 or not 0.0 < max_fraction <= 1.0:
        raise ValueError(f"need 0 < quantile < 1 and 0 < max_fraction <= 1, got {quantile}, {max_fraction}")
    if not stats.layers:
        return {}
    values = torch.cat([layer.max_act.double() for layer in stats.layers.values()])
    if not torch.isfinite(values).all():
        raise ValueError("max_act holds NaN or infinite values: the calibration statistics are broken")
    top = values.max().item()
    if top <= 0.0:
        return {}
    threshold = max(torch.quantile(values, quantile).item(), max_fraction * top)
    found = {}
    for index, layer in sorted(stats.layers.items()):
        chosen = [j for j in range(layer.num_experts)
                  if layer.max_act[j].item() > threshold and layer.count[j].item() > 0]
        if chosen:
            found[index] = chosen
    return found
