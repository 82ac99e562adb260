"""EAN (Expert Activation Norm): keep experts with the largest total output norm.

score_j = sum over tokens routed to j of ||f_j(x)|| (`ean_sum`), which grows with both
how often and how strongly an expert fires. `variant: mean` divides by the routed-token
count instead (never-routed experts score 0 either way).
"""

from __future__ import annotations

from typing import Literal

import torch

from harness.calibration.statistics import LayerStatistics
from harness.methods.pruning import PruningMethod


class EAN(PruningMethod):
    name = "ean"
    plot_label = "EAN"
    plot_colour = "#EE6677"  # the paper's colour (Paul Tol's "bright" scheme)

    class Config(PruningMethod.Config):
        variant: Literal["sum", "mean"] = "sum"

    def scores(self, layer: LayerStatistics) -> torch.Tensor:
        if self.config.variant == "sum":
            return layer.ean_sum
        return torch.where(layer.count > 0, layer.ean_sum / layer.count.clamp(min=1), 0.0)
