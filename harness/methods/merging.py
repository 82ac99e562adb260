"""The shared base of merging methods: partition every layer's experts into `kept` clusters.

A merging method only says how to cluster the experts of one router group
(`cluster`); this base turns clusters into plan groups that cover every original
expert:

* members ordered by routed-token count, most used first (ties by lower index), so
  `members[0]` is the cluster's dominant expert (the one M-SMoE aligns the others to);
* new experts ordered by the original index of their `members[0]`, which keeps router
  groups contiguous ([g*K/n_group, (g+1)*K/n_group) come from original group g);
* merge weights proportional to routed-token counts (`weighting: frequency`), uniform
  when no member was ever routed; or uniform (`weighting: uniform`).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar, Literal

from harness.calibration.statistics import CalibrationStatistics, LayerStatistics
from harness.methods.base import Method, PlanningError, frequency_order
from harness.methods.constraints import ExpertConstraints
from harness.plan import ExpertGroup, LayerPlan


class MergingMethod(Method):
    """Merge each layer's experts into `kept` groups."""

    kind = "merge"
    # Whether the writer should permute members' intermediate neurons onto members[0] first.
    align: ClassVar[bool] = False

    class Config(Method.Config):
        weighting: Literal["frequency", "uniform"] = "frequency"

    @abstractmethod
    def cluster(self, index: int, layer: LayerStatistics, experts: list[int], n_clusters: int) -> list[list[int]]:
        """Partition `experts` (one router group of decoder layer `index`) into `n_clusters` clusters."""

    def plan_layers(self, stats: CalibrationStatistics, kept: int, constraints: ExpertConstraints
                    ) -> dict[int, LayerPlan]:
        per_group = constraints.per_group(kept)
        layers = {}
        for index, layer in sorted(stats.layers.items()):
            groups: list[ExpertGroup] = []
            for experts in constraints.groups():
                clusters = self.cluster(index, layer, list(experts), per_group)
                check_partition(clusters, list(experts), per_group, f"{self.name} layer {index}")
                groups += sorted((self.group(layer, c) for c in clusters), key=lambda g: g.members[0])
            layers[index] = LayerPlan(num_experts=layer.num_experts, groups=groups)
        return layers

    def group(self, layer: LayerStatistics, cluster: list[int]) -> ExpertGroup:
        members = frequency_order(layer, cluster)
        return ExpertGroup(members=members, weights=merge_weights(layer, members, self.config.weighting),
                           align=self.align and len(members) > 1)


def merge_weights(layer: LayerStatistics, members: list[int], weighting: str = "frequency") -> list[float]:
    """Weights summing to 1: routed-token counts (uniform if all are zero), or uniform."""
    counts = [float(layer.count[j].item()) for j in members]
    total = sum(counts)
    if weighting == "uniform" or total <= 0.0:
        return [1.0 / len(members)] * len(members)
    return [c / total for c in counts]


def check_partition(clusters: list[list[int]], experts: list[int], n_clusters: int, where: str) -> None:
    """A method's clustering must split exactly `experts` into `n_clusters` non-empty parts."""
    flat = sorted(j for c in clusters for j in c)
    if len(clusters) != n_clusters or any(not c for c in clusters) or flat != sorted(experts):
        raise PlanningError(f"{where}: clustering {clusters} is not a partition of {experts} "
                            f"into {n_clusters} non-empty clusters")
