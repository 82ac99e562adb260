"""M-SMoE: merge every expert into a dominant expert it routes like.

Per layer (per router group), the `kept` most-used experts (routed-token count, ties by
lower index) are dominant. Every other expert joins the dominant expert whose router
logits are most alike over the calibration tokens (cosine similarity of router-logit
columns, `router_similarity`: calibrate with router_similarity=True); ties go to the
lower dominant index. Groups are marked `align=True`: the checkpoint writer permutes
each member's intermediate neurons onto the dominant expert (`members[0]`) by weight
matching before the frequency-weighted average.
"""

from __future__ import annotations

from harness.calibration.statistics import LayerStatistics
from harness.methods.base import frequency_order
from harness.methods.merging import MergingMethod


def assign_to_dominant(similarity: list[list[float]], dominant: list[int], others: list[int]) -> dict[int, int]:
    """Expert -> the dominant expert most similar to it (ties: lower dominant index)."""
    return {j: min(dominant, key=lambda d: (-similarity[j][d], d)) for j in others}


class MSMoE(MergingMethod):
    name = "m_smoe"
    needs = frozenset({"router_similarity"})
    align = True

    class Config(MergingMethod.Config):
        pass

    def cluster(self, index: int, layer: LayerStatistics, experts: list[int], n_clusters: int) -> list[list[int]]:
        ordered = frequency_order(layer, experts)
        dominant, others = ordered[:n_clusters], ordered[n_clusters:]
        owner = assign_to_dominant(layer.router_similarity.tolist(), dominant, others)
        return [[d] + [j for j in others if owner[j] == d] for d in dominant]
