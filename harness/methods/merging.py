"""The shared base of merging methods: partition every layer's experts into clusters.

A merging method says how many clusters each router group of each layer gets
(`cluster_counts`: by default the same `kept / n_group` everywhere; M-SMoE's global
dominance gives layers different counts) and how to cluster the experts of one router
group (`cluster`). This base turns clusters into plan groups that cover every original
expert:

* members ordered by routed-token count, most used first (ties by lower index), so
  `members[0]` is the cluster's dominant expert (the one M-SMoE aligns the others to);
* clusters never cross a router group; new experts are listed router group by router
  group, and inside a group by the original index of their `members[0]`;
* merge weights (`merge_weights`): proportional to routed-token counts
  (`weighting: frequency`) or uniform (`weighting: uniform`).

Edge cases of frequency weighting, as in the reference code (the paper's repository,
MC-SMoE and HC-SMoE all merge as sum_j f_j W_j / (sum_j f_j + eps) with f_j the usage
frequency and eps = 1e-7 or float32 eps):

* a member never routed has weight 0: it joins the cluster (its router slot serves the
  merged expert) but contributes nothing to the merged weights;
* a cluster of two or more members none of which was routed gets all-zero weights,
  a zero expert (`unrouted_cluster: zero`, the reference code's 0 / eps); with
  `unrouted_cluster: uniform` it is the plain average of its members instead;
* a cluster of one expert is kept as it is, routed or not (the paper's repository skips
  singleton clusters);
* the reference's eps is not reproduced: our weights sum exactly to 1, where its merged
  weights are scaled by sum f / (sum f + eps) (the paper's repository: f = count / tokens),
  short of 1 by about 1e-4 for a cluster routed on 0.1 % of the calibration tokens and by
  0.2 for one routed once in the paper's 1024 x 2048 tokens.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar, Literal

from harness.calibration.statistics import CalibrationStatistics, LayerStatistics
from harness.methods.base import Method, PlanningError, frequency_order
from harness.methods.constraints import ExpertConstraints
from harness.plan import ExpertGroup, LayerPlan


class MergingMethod(Method):
    """Merge each layer's experts into clusters (`kept` per layer unless `cluster_counts` says otherwise)."""

    kind = "merge"
    # Whether the writer should permute members' intermediate neurons onto members[0] first.
    align: ClassVar[bool] = False

    class Config(Method.Config):
        weighting: Literal["frequency", "uniform"] = "frequency"
        unrouted_cluster: Literal["zero", "uniform"] = "zero"

    @abstractmethod
    def cluster(self, index: int, layer: LayerStatistics, experts: list[int], n_clusters: int) -> list[list[int]]:
        """Partition `experts` (one router group of decoder layer `index`) into `n_clusters` clusters."""

    def cluster_counts(self, stats: CalibrationStatistics, kept: int, constraints: ExpertConstraints
                       ) -> dict[int, list[int]]:
        """Per layer, the number of clusters of each router group: kept / n_group everywhere."""
        return {index: [constraints.per_group(kept)] * constraints.n_group for index in stats.layers}

    def plan_layers(self, stats: CalibrationStatistics, kept: int, constraints: ExpertConstraints
                    ) -> dict[int, LayerPlan]:
        counts = self.cluster_counts(stats, kept, constraints)
        layers = {}
        for index, layer in sorted(stats.layers.items()):
            groups: list[ExpertGroup] = []
            for experts, n_clusters in zip(constraints.groups(), counts[index], strict=True):
                clusters = self.cluster(index, layer, list(experts), n_clusters)
                check_partition(clusters, list(experts), n_clusters, f"{self.name} layer {index}")
                groups += sorted((self.group(layer, c) for c in clusters), key=lambda g: g.members[0])
            layers[index] = LayerPlan(num_experts=layer.num_experts, groups=groups)
        return layers

    def group(self, layer: LayerStatistics, cluster: list[int]) -> ExpertGroup:
        members = frequency_order(layer, cluster)
        weights = merge_weights(layer, members, self.config.weighting, self.config.unrouted_cluster)
        return ExpertGroup(members=members, weights=weights, align=self.align and len(members) > 1)


def merge_weights(layer: LayerStatistics, members: list[int], weighting: str = "frequency",
                  unrouted_cluster: str = "zero") -> list[float]:
    """Merge weights of one cluster (see the module docstring for the edge cases).

    `frequency`: routed-token counts normalised to sum 1 (a never-routed member gets 0);
    a cluster of several members none of which was routed gets all zeros
    (`unrouted_cluster="zero"`) or uniform weights (`"uniform"`). `uniform`: 1/n each.
    A single member always gets [1.0].
    """
    if len(members) == 1 or weighting == "uniform":
        return [1.0 / len(members)] * len(members)
    counts = [float(layer.count[j].item()) for j in members]
    total = sum(counts)
    if total <= 0.0:
        return [0.0] * len(members) if unrouted_cluster == "zero" else [1.0 / len(members)] * len(members)
    return [c / total for c in counts]


def check_partition(clusters: list[list[int]], experts: list[int], n_clusters: int, where: str) -> None:
    """A method's clustering must split exactly `experts` into `n_clusters` non-empty parts."""
    flat = sorted(j for c in clusters for j in c)
    if len(clusters) != n_clusters or any(not c for c in clusters) or flat != sorted(experts):
        raise PlanningError(f"{where}: clustering {clusters} is not a partition of {experts} "
                            f"into {n_clusters} non-empty clusters")
