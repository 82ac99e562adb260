"""The shared base of pruning methods: score every expert, keep the best in every layer.

A pruning method only says how to score one layer's experts (`scores`); this base keeps
the highest-scoring `kept` experts of every layer (within each router group, the same
number per group), ties going to the lower expert index, and optionally always keeps
super experts (see `super_experts`). Kept experts stay in their original order.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Literal

import torch
from pydantic import Field

from harness.calibration.statistics import CalibrationStatistics, LayerStatistics
from harness.methods.base import Method, PlanningError, top_by_score
from harness.methods.constraints import ExpertConstraints
from harness.methods.super_experts import super_experts
from harness.plan import ExpertGroup, LayerPlan


class PruningMethod(Method):
    """Drop the lowest-scoring experts of every layer."""

    kind = "prune"

    class Config(Method.Config):
        # Always keep super experts (max_act outliers; rule in harness.methods.super_experts).
        protect_super_experts: bool = False
        super_expert_quantile: float = Field(0.995, gt=0.0, lt=1.0)
        super_expert_max_fraction: float = Field(0.1, gt=0.0, le=1.0)
        # The paper code's rule: only the first 75 % of MoE layers, on the signed maximum activation.
        super_expert_layers: Literal["first_75", "all"] = "first_75"
        super_expert_activation: Literal["signed", "absolute"] = "signed"

    @abstractmethod
    def scores(self, layer: LayerStatistics) -> torch.Tensor:
        """Importance of each expert [E]: higher is kept first. Must be finite (zero-count experts too)."""

    def layer_scores(self, index: int, layer: LayerStatistics) -> torch.Tensor:
        """Scores of decoder layer `index`; override only when the layer index matters (seeded random)."""
        return self.scores(layer)

    def protected(self, stats: CalibrationStatistics) -> dict[int, list[int]]:
        if not self.config.protect_super_experts:
            return {}
        return super_experts(stats, self.config.super_expert_quantile, self.config.super_expert_max_fraction,
                             layers=self.config.super_expert_layers, activation=self.config.super_expert_activation)

    def plan_layers(self, stats: CalibrationStatistics, kept: int, constraints: ExpertConstraints
                    ) -> dict[int, LayerPlan]:
        protected = self.protected(stats)
        layers = {}
        for index, layer in sorted(stats.layers.items()):
            scores = self.layer_scores(index, layer)
            if scores.shape != (layer.num_experts,):
                raise PlanningError(f"{self.name}: scores of layer {index} have shape {tuple(scores.shape)}, "
                                    f"expected ({layer.num_experts},)")
            if not torch.isfinite(scores).all():
                raise PlanningError(f"{self.name}: layer {index} has non-finite scores {scores.tolist()}")
            chosen = keep_experts(scores.double(), constraints, kept, protected.get(index, []), index)
            layers[index] = LayerPlan(num_experts=layer.num_experts, groups=[ExpertGroup.single(j) for j in chosen])
        return layers


def keep_experts(scores: torch.Tensor, constraints: ExpertConstraints, kept: int, protected: list[int],
                 layer_index: int) -> list[int]:
    """The experts one layer keeps, ascending: in every router group its protected experts,
    then its best-scoring others up to kept / n_group (ties by lower index)."""
    per_group = constraints.per_group(kept)
    chosen: list[int] = []
    for g, members in enumerate(constraints.groups()):
        forced = [j for j in protected if j in members]
        if len(forced) > per_group:
            where = f"router group {g} of layer {layer_index}" if constraints.n_group > 1 else f"layer {layer_index}"
            raise PlanningError(f"{where} has {len(forced)} super experts {forced} to protect but keeps only "
                                f"{per_group}: use a lower ratio or turn protect_super_experts off")
        others = [j for j in members if j not in forced]
        chosen += forced + top_by_score(scores, others, per_group - len(forced))
    return sorted(chosen)
