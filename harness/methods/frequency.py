"""Frequency: keep the experts the router selects most often (routed-token count)."""

from __future__ import annotations

import torch

from harness.calibration.statistics import LayerStatistics
from harness.methods.pruning import PruningMethod


class Frequency(PruningMethod):
    name = "frequency"

    class Config(PruningMethod.Config):
        pass

    def scores(self, layer: LayerStatistics) -> torch.Tensor:
        return layer.count
