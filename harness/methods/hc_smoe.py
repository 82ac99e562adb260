"""HC-SMoE: hierarchical clustering of experts by their mean output, then merging.

Each expert is represented by its output averaged over *all* calibration tokens
(`mean_out`: calibration with the `mean_out` optional statistics). Experts are clustered by
average linkage on Euclidean distance, cut at the target count, and each cluster is
merged by frequency-weighted averaging (see `merging`). Distances are computed exactly
(no Gram-matrix shortcut): about 3 s per layer for 384 experts of width 7168 on one CPU.
"""

from __future__ import annotations

import numpy as np
import torch

from harness.calibration.statistics import LayerStatistics
from harness.methods.merging import MergingMethod


def average_linkage(points: torch.Tensor, n_clusters: int) -> list[list[int]]:
    """Agglomerative clustering of the rows of `points` [N, D], average linkage, Euclidean.

    Repeatedly merges the two clusters with the smallest mean pairwise distance
    (Lance-Williams update) until `n_clusters` remain. Ties go to the pair whose smaller
    members are lowest (row-major order over clusters named by their smallest member).
    Returns clusters of row indices, each ascending, ordered by smallest member.
    """
    n = points.shape[0]
    if not 1 <= n_clusters <= n:
        raise ValueError(f"cannot cut {n} points into {n_clusters} clusters")
    pts = points.detach().to(torch.float64)
    # The direct (non-matmul) path: exact distances, so near-ties are not decided by rounding.
    dist = torch.cdist(pts[None], pts[None], compute_mode="donot_use_mm_for_euclid_dist")[0].numpy().copy()
    upper = np.triu(dist, 1)
    upper[np.tril_indices(n)] = np.inf  # search only i < j
    size = np.ones(n)
    members = {i: [i] for i in range(n)}
    for _ in range(n - n_clusters):
        a, b = divmod(int(np.argmin(upper)), n)  # a < b; slot of a merged cluster = its smallest member
        merged = (size[a] * dist[a] + size[b] * dist[b]) / (size[a] + size[b])
        dist[a, :] = merged
        dist[:, a] = merged
        size[a] += size[b]
        members[a] += members.pop(b)
        alive = np.array(sorted(members))
        upper[:, b] = np.inf
        upper[b, :] = np.inf
        before, after = alive[alive < a], alive[alive > a]
        upper[before, a] = merged[before]
        upper[a, after] = merged[after]
    return [sorted(members[slot]) for slot in sorted(members)]


class HCSMoE(MergingMethod):
    name = "hc_smoe"
    plot_label = "HC-SMoE"
    plot_colour = "#CCBB44"  # the paper's colour (Paul Tol's "bright" scheme)
    needs = frozenset({"mean_out"})

    class Config(MergingMethod.Config):
        pass

    def cluster(self, index: int, layer: LayerStatistics, experts: list[int], n_clusters: int) -> list[list[int]]:
        points = layer.mean_out[experts]
        return [[experts[i] for i in c] for c in average_linkage(points, n_clusters)]
