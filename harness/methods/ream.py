"""REAM (Router-weighted Expert Activation Merging; Jha et al., arXiv 2604.04356): experts merged
around their most salient members.

What the reference code (SamsungSAILMontreal/ream, `ream/ream.py: pseudo_group`, `ream/merger.py`,
run with its defaults `--saliency reap --grouping ream --merging logits+weights --group_size 16`)
does to one MoE layer, and what this class does:

1. **Saliency** s_j: the REAP score (mean over the tokens routed to j of g_j(x) * ||f_j(x)||;
   `saliency: frequency` uses the routed-token count, the code's `--saliency freq`). Experts that
   were never routed get min(0.5, smallest positive saliency of the layer) instead of 0, so that they
   can still be merged with a positive weight (the code's rule).
2. **Centroids**: the k most salient experts (k = the experts the layer keeps).
3. **Distance** between experts, 1 - (sim_out + sim_gate) / 2, with
   sim_out = (1 + cos(m_i, m_j)) / 2 between the experts' mean gated outputs m_j, and
   sim_gate = 1 - d_ij / max d, d_ij the Euclidean distance between the experts' router-logit
   columns (over the calibration tokens) normalised to unit length: sqrt(2 - 2 cos).
   `gate_similarity: false` drops sim_gate (the code's `--no_gate_output`).
4. **Grouping** ("pseudo-pruning" with group size C): centroids in order of saliency, most salient
   first, each takes the experts nearest to it that are neither centroids nor taken yet, until its
   group holds C experts (itself included); it stops once every expert has a group. So the most
   salient centroids absorb most experts and the last ones often stay alone. k groups of at most C
   experts must cover the layer (k * C >= experts), or the plan fails. `group_size: 0` is the
   code's MC-SMoE variant: every other expert joins its nearest centroid.
5. **Merging**: each group's members, centroid first, averaged with weights s_j / sum of s over
   the group (`weighting: uniform`: the plain average, the code's `--merging avg`), after permuting
   every member's intermediate neurons onto the centroid's (`align`, linear assignment).

Where we depart from the reference code, and why:

* Routing. The code computes saliency and gated outputs from a softmax over all router logits,
  "copied from the qwen3 moe forward pass", for every family; we use the combine weights g_j(x) the
  model's own router produces (sigmoid scores, correction bias, groups, renormalisation, scaling:
  harness.calibration.observer). Consequences: the gated output m_j is the mean over all tokens of
  g_j(x) f_j(x), where g_j is 0 on tokens the router did not send to j (the code weighs every token
  by its softmax probability, which needs every expert run on every token); a never-routed expert
  has m_j = 0 and so sim_out = 1/2 to every expert. And the saliency is REAP's g * ||f||: with its
  default gated similarity the code passes outputs already multiplied by the softmax probability to
  its REAP formula, which multiplies by it again (p^2 * ||f||).
* Exact, batch-independent statistics: float64 sums over the real (non-padding) calibration tokens;
  the code averages per-batch means, includes padding tokens in the router-logit similarity and the
  gated means, and samples tokens for the neuron activations.
* Alignment. The code matches neurons by the sum of two distances: between the neurons' activations
  on sampled calibration tokens (sampled independently for each expert, so the two experts' samples
  are different tokens) and between PCA-reduced, normalised weight vectors [gate_i | up_i | down_:,i].
  We use the checkpoint writer's exact weight matching (the linear assignment maximising the summed
  inner products of the raw neuron vectors, harness.checkpoint.expert_merging), as for M-SMoE.
* The router. The code keeps only the centroid's router row and drops the other members' rows (the
  layer ends with k router slots). The harness writes merge plans with every router slot kept and a
  group's members sharing the merged weights (`materialisation: shared_slots`, the REAP paper's
  merged models), so a token that chose a merged member still reaches the merged expert. Distinct
  experts and parameter counts are the same; the routing is not.
* Ties (equal saliency, equal distance) go to the lower expert index, where the code's unstable
  numpy sorts decide; a layer none of whose experts was routed (the code fails) gets equal saliency.
* The code's sequential mode (each layer's statistics taken after merging the layers before it) is
  not reproduced: like every method here, REAM plans from one calibration of the original model.
* Router groups (GLM / DeepSeek-V3 `n_group` > 1), which the code does not know: centroids and groups
  stay inside a router group (k / n_group centroids each); distances are normalised over the layer.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from harness.calibration.statistics import LayerStatistics
from harness.methods.base import Method, PlanningError, top_by_score
from harness.methods.merging import MergingMethod
from harness.plan import ExpertGroup


def ream_saliency(layer: LayerStatistics, kind: str = "reap") -> list[float]:
    """Per expert, the saliency that picks centroids and weighs merges: REAP score or routed count, with
    the never-routed experts raised to min(0.5, smallest positive saliency) (all equal when none is positive)."""
    values = (layer.reap if kind == "reap" else layer.count).tolist()
    positive = [v for v in values if v > 0]
    if not positive:
        return [1.0] * len(values)
    floor = min(0.5, min(positive))
    return [v if v > 0 else floor for v in values]


def ream_distance(layer: LayerStatistics, gate_similarity: bool = True) -> list[list[float]]:
    """[E, E] distances 1 - similarity between the experts of one layer (module docstring, step 3)."""
    out = layer.gated_out.double()
    norms = out.norm(dim=1)
    cos = (out @ out.T) / (norms[:, None] * norms[None, :]).clamp(min=1e-300)
    cos = torch.where((norms[:, None] > 0) & (norms[None, :] > 0), cos, 0.0)  # a zero vector: cosine 0
    similarity = (cos + 1.0) / 2.0
    if gate_similarity:
        # Unit-length logit columns u_i: ||u_i - u_j|| = sqrt(2 - 2 cos), scaled by the layer's largest.
        gap = (2.0 - 2.0 * layer.router_similarity.double()).clamp(min=0.0).sqrt()
        gap.fill_diagonal_(0.0)
        largest = gap.max()
        gate = 1.0 - gap / largest if largest > 0 else torch.ones_like(gap)
        similarity = (similarity + gate) / 2.0
    return (1.0 - similarity).tolist()


def pseudo_group(saliency: list[float], distance: list[list[float]], experts: list[int], k: int,
                 group_size: int) -> list[list[int]]:
    """REAM's grouping of `experts` into k groups around the k most salient (module docstring, step 4).

    Returns the groups in centroid order (most salient first), each as [centroid, others ascending].
    """
    scores = torch.tensor(saliency, dtype=torch.float64)
    centroids = top_by_score(scores, experts, k)
    owner = {c: c for c in centroids}
    if group_size > 0:
        if k * group_size < len(experts):
            raise PlanningError(f"REAM: {k} groups of at most group_size={group_size} experts cannot hold "
                                f"{len(experts)} experts: raise group_size to at least "
                                f"{math.ceil(len(experts) / k)} or use a lower ratio")
        for c in centroids:
            size = 1
            for j in sorted(experts, key=lambda j: (distance[c][j], j)):
                if size >= group_size:
                    break
                if j not in owner:
                    owner[j] = c
                    size += 1
            if len(owner) == len(experts):
                break
    else:  # the code's MC-SMoE variant: nearest centroid, ties to the more salient
        for j in experts:
            if j not in owner:
                owner[j] = min(centroids, key=lambda c: distance[c][j])
    return [[c] + sorted(j for j in experts if owner[j] == c and j != c) for c in centroids]


class REAM(MergingMethod):
    name = "ream"
    plot_label = "REAM"
    plot_colour = "#AA4499"  # Paul Tol's "muted" purple: not one of the paper's colours nor the spare ones
    needs = frozenset({"gated_out", "router_similarity"})

    class Config(Method.Config):
        saliency: Literal["reap", "frequency"] = "reap"
        # The code's C: the most experts one group may hold (its centroid included); 0: nearest centroid.
        group_size: int = Field(16, ge=0)
        gate_similarity: bool = True
        weighting: Literal["saliency", "uniform"] = "saliency"
        align: bool = True

    def cluster(self, index: int, layer: LayerStatistics, experts: list[int], n_clusters: int) -> list[list[int]]:
        saliency = ream_saliency(layer, self.config.saliency)
        distance = ream_distance(layer, self.config.gate_similarity)
        try:
            return pseudo_group(saliency, distance, experts, n_clusters, self.config.group_size)
        except PlanningError as error:
            raise PlanningError(f"layer {index}: {error}") from None

    def group(self, layer: LayerStatistics, cluster: list[int]) -> ExpertGroup:
        """`cluster` as `pseudo_group` lists it: the centroid first (the alignment reference)."""
        if len(cluster) == 1 or self.config.weighting == "uniform":
            weights = [1.0 / len(cluster)] * len(cluster)
        else:
            saliency = ream_saliency(layer, self.config.saliency)
            total = sum(saliency[j] for j in cluster)
            weights = [saliency[j] / total for j in cluster]
        return ExpertGroup(members=cluster, weights=weights, align=self.config.align and len(cluster) > 1)
