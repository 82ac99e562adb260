"""Random pruning: the control every informed method must beat.

Each layer's scores are a uniform random draw from a generator seeded by (seed, layer
index), so a plan is reproducible for a seed, layers are independent of one another,
and the statistics do not influence the choice at all.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from harness.calibration.statistics import LayerStatistics
from harness.methods.pruning import PruningMethod


class RandomPruning(PruningMethod):
    name = "random"

    class Config(PruningMethod.Config):
        seed: int = Field(0, ge=0)

    def scores(self, layer: LayerStatistics) -> torch.Tensor:
        raise NotImplementedError("random scores depend on the layer index: use layer_scores")

    def layer_scores(self, index: int, layer: LayerStatistics) -> torch.Tensor:
        rng = np.random.default_rng([self.config.seed, index])
        return torch.from_numpy(rng.random(layer.num_experts))
