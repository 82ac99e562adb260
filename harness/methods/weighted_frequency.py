"""Weighted frequency: keep the experts with the largest summed combine weight (gate_sum).

Unlike plain frequency, a selection with a small combine weight counts for little.
"""

from __future__ import annotations

import torch

from harness.calibration.statistics import LayerStatistics
from harness.methods.pruning import PruningMethod


class WeightedFrequency(PruningMethod):
    name = "weighted_frequency"

    class Config(PruningMethod.Config):
        pass

    def scores(self, layer: LayerStatistics) -> torch.Tensor:
        return layer.gate_sum
