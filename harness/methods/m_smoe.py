"""M-SMoE: merge every expert into a dominant expert it routes like.

Dominant experts (one per merged group) are chosen by usage frequency f_j = count_j /
tokens (routed tokens of expert j over the layer's real tokens), in one of two ways:

* `dominance: global` (default; MC-SMoE's global grouping, and the rule of the paper's
  repository, `reap/cluster.py: mc_smoe_clustering`, whose models it writes under
  "non_uniform_merged_models"). The whole model keeps T = L * K dominant experts, L the
  MoE layers and K = round(E * (1 - ratio)) the per-layer count of the ratio (the
  pruning methods' count, so merged and pruned models of one ratio have the same number
  of distinct experts). First the most-used expert of every layer is dominant (ties: lower
  index), so every layer keeps at least one group; the other T - L dominants are the
  most-used remaining experts of all layers together, ranked by f (ties: lower layer,
  then lower expert index). Layers thus end with different numbers of groups, summing
  to T. With router groups (`n_group` > 1) the rule runs on (layer, router group) units:
  the most-used expert of every group of every layer is dominant first, and clusters stay
  inside their group, as in the per-layer rule (the reference code has no groups).
* `dominance: layer`: the K most-used experts of each layer (of each router group: K /
  n_group) are dominant, so every layer has K groups.

Every other expert joins the dominant expert of its layer (and router group) it is most
similar to, ties going to the lower dominant index:

* `similarity: second_order` (default; the paper's repository, `reap/main.py: cluster`
  with `--expert-sim router_logits --distance_measure cosine`, the settings of its
  `experiments/m_smoe.sh`): D = 1 - cosine similarity of the experts' router-logit
  columns, then the cosine similarity between rows of D. The reference averages a
  per-batch D; ours is computed over all calibration tokens at once (batch-invariant).
* `similarity: first_order` (MC-SMoE's own code, `mcsmoe/merging/grouping*.py`,
  `router-logits` similarity): the cosine similarity of the router-logit columns.

Both need calibration with the `router_similarity` optional statistics. Groups are marked `align=True`: the
checkpoint writer permutes each member's intermediate neurons onto the dominant expert
(`members[0]`) by weight matching before the frequency-weighted average. Merged
checkpoints keep every router slot, so layers with different group counts are served
unchanged.

MC-SMoE's own global rule (`ExpertsGrouper*._assign_num_groups_per_layer`, frequencies
normalised by the layer's routed count: the same ranking) differs only at ties: it keeps
the experts strictly above the (T+1)-th largest frequency, so a tie between the T-th and
(T+1)-th gives fewer than T groups; the rule here always gives exactly T.
"""

from __future__ import annotations

from typing import Literal

from harness.calibration.statistics import CalibrationStatistics, LayerStatistics
from harness.methods.base import frequency_order
from harness.methods.constraints import ExpertConstraints
from harness.methods.merging import MergingMethod


def assign_to_dominant(similarity: list[list[float]], dominant: list[int], others: list[int]) -> dict[int, int]:
    """Expert -> the dominant expert most similar to it (ties: lower dominant index)."""
    return {j: min(dominant, key=lambda d: (-similarity[j][d], d)) for j in others}


def usage_frequency(layer: LayerStatistics) -> list[float]:
    """f_j = routed tokens of expert j / real tokens of the layer (0 when the layer saw none)."""
    tokens = max(layer.tokens, 1)
    return [c / tokens for c in layer.count.tolist()]


def global_dominant_counts(stats: CalibrationStatistics, kept: int, constraints: ExpertConstraints
                           ) -> dict[int, list[int]]:
    """Per layer, the number of dominant experts (= merged groups) of each router group under
    global dominance (module docstring): len(layers) * kept in all, at least one per group."""
    units = [(index, g, list(experts)) for index in sorted(stats.layers)
             for g, experts in enumerate(constraints.groups())]
    total = kept * len(stats.layers)
    if total < len(units):  # cannot happen for a feasible count (kept is a multiple of n_group)
        raise ValueError(f"{total} groups cannot give each of {len(units)} (layer, router group) units one")
    counts = {index: [1] * constraints.n_group for index in stats.layers}
    seeds = {(index, frequency_order(stats.layers[index], experts)[0]) for index, _, experts in units}
    candidates = []
    for index, g, experts in units:
        freq = usage_frequency(stats.layers[index])
        candidates += [(-freq[j], index, j, g) for j in experts if (index, j) not in seeds]
    for _, index, _, g in sorted(candidates)[:total - len(units)]:
        counts[index][g] += 1
    return counts


class MSMoE(MergingMethod):
    name = "m_smoe"
    plot_label = "M-SMoE"
    plot_colour = "#66CCEE"  # the paper's colour (Paul Tol's "bright" scheme)
    needs = frozenset({"router_similarity"})
    align = True

    class Config(MergingMethod.Config):
        dominance: Literal["global", "layer"] = "global"
        similarity: Literal["second_order", "first_order"] = "second_order"

    def cluster_counts(self, stats: CalibrationStatistics, kept: int, constraints: ExpertConstraints
                       ) -> dict[int, list[int]]:
        if self.config.dominance == "layer":
            return super().cluster_counts(stats, kept, constraints)
        return global_dominant_counts(stats, kept, constraints)

    def similarity(self, layer: LayerStatistics) -> list[list[float]]:
        if self.config.similarity == "first_order":
            return layer.router_similarity.tolist()
        return layer.router_similarity_second_order.tolist()

    def cluster(self, index: int, layer: LayerStatistics, experts: list[int], n_clusters: int) -> list[list[int]]:
        ordered = frequency_order(layer, experts)
        dominant, others = ordered[:n_clusters], ordered[n_clusters:]
        owner = assign_to_dominant(self.similarity(layer), dominant, others)
        return [[d] + [j for j in others if owner[j] == d] for d in dominant]
