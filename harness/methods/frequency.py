"""Frequency: keep the experts the router selects most often (routed-token count)."""

from __future__ import annotations

import torch

from harness.calibration.statistics import LayerStatistics
from harness.methods.pruning import PruningMethod


class Frequency(PruningMethod):
    name = "frequency"
    plot_label = "Frequency"
    plot_colour = "#228833"  # the paper's colour (Paul Tol's "bright" scheme)

    class Config(PruningMethod.Config):
        pass

    def scores(self, layer: LayerStatistics) -> torch.Tensor:
        return layer.count
