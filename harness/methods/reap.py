"""REAP (Router-weighted Expert Activation Pruning): keep experts whose gated outputs are largest.

score_j = mean over tokens routed to j of g_j(x) * ||f_j(x)||  (reap_sum / count). An
expert that is rarely chosen but contributes a large gated output when it is keeps a
high score, where frequency would drop it. Never-routed experts score 0.
"""

from __future__ import annotations

import torch

from harness.calibration.statistics import LayerStatistics
from harness.methods.pruning import PruningMethod


class REAP(PruningMethod):
    name = "reap"
    plot_label = "REAP (ours)"
    plot_colour = "#4477AA"  # the paper's colour (Paul Tol's "bright" scheme)

    class Config(PruningMethod.Config):
        pass

    def scores(self, layer: LayerStatistics) -> torch.Tensor:
        return layer.reap
