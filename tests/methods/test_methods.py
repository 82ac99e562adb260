"""Compression methods: exact plans on hand-built statistics, brute-force references for the
clustering and assignment steps, routing constraints checked against the real grouped router,
and valid plans from real zoo statistics for every family."""

from __future__ import annotations

import importlib.metadata
import itertools
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from harness.calibration.statistics import CalibrationStatistics, LayerStatistics
from harness.methods import UnknownMethodError, get_method, get_method_class, method_names
from harness.methods.base import PlanningError
from harness.methods.constraints import ExpertConstraints, InfeasibleRatioError
from harness.methods.hc_smoe import average_linkage
from harness.methods.pruning import PruningMethod
from harness.methods.super_experts import super_experts
from harness.plan import Plan

PRUNING = ["reap", "ean", "frequency", "weighted_frequency", "random"]
MERGING = ["hc_smoe", "m_smoe", "ream"]


def _t(values, n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.float64) if values is None else torch.tensor(values, dtype=torch.float64)


def make_layer(count, gate_sum=None, ean_sum=None, reap_sum=None, max_act=None, mean_out=None, logits=None,
               tokens: int = 10) -> LayerStatistics:
    """LayerStatistics from plain lists; `mean_out` is the per-token mean [E, H], `logits` the router logits [T, E]."""
    n = len(count)
    layer = LayerStatistics(num_experts=n, hidden_size=0 if mean_out is None else len(mean_out[0]))
    layer.count, layer.gate_sum, layer.ean_sum = _t(count, n), _t(gate_sum, n), _t(ean_sum, n)
    layer.reap_sum, layer.max_act = _t(reap_sum, n), _t(max_act, n)
    layer.tokens = tokens
    if mean_out is not None:
        layer.mean_out_sum = torch.tensor(mean_out, dtype=torch.float64) * tokens
    if logits is not None:
        raw = torch.tensor(logits, dtype=torch.float64)
        layer.router_gram, layer.router_logit_sum = raw.T @ raw, raw.sum(0)
    return layer


def kept(plan: Plan) -> dict[int, list[int]]:
    return {i: lp.kept for i, lp in plan.layers.items()}


def groups(plan: Plan, layer: int) -> list[tuple[list[int], list[float], bool]]:
    return [(g.members, g.weights, g.align) for g in plan.layers[layer].groups]


# -- one example where every pruning method keeps a different expert ---------------------------
#
# Experts 0 and 1 lead on every statistic. Each of 2..6 leads on one score only:
#   2 most often routed, with small gates and small outputs        -> frequency
#   3 large gates, small outputs                                    -> weighted frequency
#   4 often routed with large outputs but small gates               -> EAN (sum)
#   5 rarely routed, but large gate * output when it is             -> REAP
#   6 very rarely routed, the largest outputs, tiny gates           -> EAN (mean)
DISTINCT = dict(
    count=[200, 200, 100, 50, 60, 5, 2],
    gate_sum=[180, 180, 10, 40, 6, 4.5, 0.1],
    ean_sum=[6000, 6000, 100, 50, 300, 50, 40],
    reap_sum=[5400, 5400, 10, 40, 30, 45, 2],
)
KEEP_3_OF_7 = 4 / 7


@pytest.mark.parametrize(("name", "config", "expected"), [
    ("frequency", {}, [0, 1, 2]),
    ("weighted_frequency", {}, [0, 1, 3]),
    ("ean", {}, [0, 1, 4]),
    ("reap", {}, [0, 1, 5]),
    ("ean", {"variant": "mean"}, [0, 1, 6]),
])
def test_each_pruning_method_keeps_its_own_expert(name, config, expected):
    stats = CalibrationStatistics({3: make_layer(**DISTINCT)})
    plan = get_method(name, config).plan(stats, KEEP_3_OF_7, ExpertConstraints(7, 2), calibration_key="k1")
    assert kept(plan) == {3: expected}
    assert plan.kind == "prune" and plan.method == name and plan.calibration_key == "k1"
    assert plan.method_config == get_method(name, config).config.model_dump()


def test_random_ignores_statistics_and_is_seeded():
    constraints = ExpertConstraints(16, 2)
    rng = np.random.default_rng(7)
    a = CalibrationStatistics({i: make_layer(rng.integers(0, 50, 16).tolist()) for i in (1, 2, 3)})
    b = CalibrationStatistics({i: make_layer(rng.integers(0, 50, 16).tolist()) for i in (1, 2, 3)})
    plans = {seed: get_method("random", {"seed": seed}).plan(a, 0.5, constraints) for seed in (0, 1)}
    # Same seed, different statistics: the same plan (a control must not look at the data).
    assert kept(get_method("random", {"seed": 0}).plan(b, 0.5, constraints)) == kept(plans[0])
    assert kept(plans[0]) != kept(plans[1])
    assert len({tuple(v) for v in kept(plans[0]).values()}) == 3  # layers drawn independently
    # Pinned: a change here changes every published random baseline.
    assert kept(plans[0])[1] == sorted(np.argsort(-np.random.default_rng([0, 1]).random(16), kind="stable")[:8])
    assert kept(plans[0])[1] == [0, 2, 3, 6, 8, 9, 13, 14]


# -- merging: HC-SMoE and M-SMoE choose different partners -------------------------------------
#
# Outputs: 0 ~ 1 and 2 ~ 3 (HC-SMoE pairs them). Frequency: 0 and 1 dominate; router logits:
# 2 routes like 0 and 3 like 1 (M-SMoE pairs 0+2 and 1+3).
MERGE = dict(
    count=[10, 9, 1, 1],
    mean_out=[[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [5.1, 0.0]],
    logits=[[1.0, 0.0, 1.0, 0.1], [0.0, 1.0, 0.1, 1.0]],
)


def test_hc_smoe_clusters_by_output():
    plan = get_method("hc_smoe").plan(CalibrationStatistics({1: make_layer(**MERGE)}), 0.5, ExpertConstraints(4, 2))
    assert plan.kind == "merge"
    assert groups(plan, 1) == [([0, 1], [10 / 19, 9 / 19], False), ([2, 3], [0.5, 0.5], False)]


def test_m_smoe_joins_dominant_by_router_similarity():
    for similarity in ("second_order", "first_order"):
        plan = get_method("m_smoe", {"similarity": similarity}).plan(
            CalibrationStatistics({1: make_layer(**MERGE)}), 0.5, ExpertConstraints(4, 2))
        assert groups(plan, 1) == [([0, 2], [10 / 11, 1 / 11], True), ([1, 3], [0.9, 0.1], True)], similarity


# Router logits (3 tokens x 4 experts) on which the two similarity orders disagree about expert 3:
# its logit column is closest to expert 0's (first order), but its distances to the others are
# shaped like expert 1's (second order).
ORDERS = dict(count=[10, 9, 1, 1], logits=[[0.0, 2.0, -2.0, 0.0], [-1.0, 2.0, -2.0, 1.0], [2.0, -1.0, -1.0, 1.0]])


def test_m_smoe_similarity_orders_differ_and_default_is_the_papers():
    stats = CalibrationStatistics({0: make_layer(**ORDERS)})
    first = get_method("m_smoe", {"similarity": "first_order"}).plan(stats, 0.5, ExpertConstraints(4, 2))
    second = get_method("m_smoe", {"similarity": "second_order"}).plan(stats, 0.5, ExpertConstraints(4, 2))
    assert [g.members for g in first.layers[0].groups] == [[0, 2, 3], [1]]
    assert [g.members for g in second.layers[0].groups] == [[0, 2], [1, 3]]
    assert get_method("m_smoe").plan(stats, 0.5, ExpertConstraints(4, 2)).layers == second.layers
    assert get_method("m_smoe").config.similarity == "second_order"
    assert get_method("m_smoe").config.dominance == "global"


def reference_second_order(batches: list[np.ndarray]) -> np.ndarray:
    """The paper repository's M-SMoE similarity, from its definition: per batch, the cosine distance
    between experts' router-logit columns; averaged over batches weighted by their tokens; then the
    cosine similarity between rows of that matrix."""
    total = sum(len(b) for b in batches)
    distance = np.zeros((batches[0].shape[1],) * 2)
    for logits in batches:
        e = logits.shape[1]
        d = np.array([[1 - logits[:, i] @ logits[:, j] / np.linalg.norm(logits[:, i]) / np.linalg.norm(logits[:, j])
                       for j in range(e)] for i in range(e)])
        distance += d * len(logits) / total
    return np.array([[distance[i] @ distance[j] / np.linalg.norm(distance[i]) / np.linalg.norm(distance[j])
                      for j in range(len(distance))] for i in range(len(distance))])


def test_second_order_similarity_matches_definition_and_is_batch_invariant():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(40, 6))
    layer = make_layer([1] * 6, logits=logits.tolist())
    # One batch: ours is exactly the reference's computation.
    assert np.allclose(layer.router_similarity_second_order.numpy(), reference_second_order([logits]), atol=1e-12)
    # Statistics accumulated over any batching are the same sums: ours does not move.
    split = make_layer([1] * 6)
    split.router_gram = sum(torch.from_numpy(b.T @ b) for b in np.split(logits, [7, 25]))
    assert torch.allclose(split.router_similarity_second_order, layer.router_similarity_second_order, atol=1e-12)
    # The reference's per-batch average does depend on the batching.
    assert not np.allclose(reference_second_order(np.split(logits, [7, 25])), reference_second_order([logits]),
                           atol=1e-4)


def test_uniform_weighting_option():
    plan = get_method("m_smoe", {"weighting": "uniform"}).plan(
        CalibrationStatistics({1: make_layer(**MERGE)}), 0.5, ExpertConstraints(4, 2))
    assert [g.weights for g in plan.layers[1].groups] == [[0.5, 0.5], [0.5, 0.5]]


# -- brute-force references ---------------------------------------------------------------------
def naive_average_linkage(points: np.ndarray, k: int) -> list[list[int]]:
    """Average linkage straight from its definition: mean of all cross-cluster distances."""
    clusters = [[i] for i in range(len(points))]

    def dist(a, b):
        return float(np.mean([np.linalg.norm(points[i] - points[j]) for i in a for j in b]))

    while len(clusters) > k:
        _, x, y = min((dist(a, b), x, y) for (x, a), (y, b) in itertools.combinations(enumerate(clusters), 2))
        clusters[x] = clusters[x] + clusters.pop(y)
    return sorted(sorted(c) for c in clusters)


def test_average_linkage_matches_definition_and_scipy():
    from scipy.cluster.hierarchy import cut_tree, linkage

    for seed in range(5):
        points = np.random.default_rng(seed).normal(size=(10, 3))
        tree = linkage(points, method="average", metric="euclidean")
        for k in range(1, 11):
            ours = average_linkage(torch.from_numpy(points), k)
            assert ours == naive_average_linkage(points, k), (seed, k)
            labels = cut_tree(tree, n_clusters=k)[:, 0]
            assert ours == sorted(sorted(np.flatnonzero(labels == c).tolist()) for c in set(labels)), (seed, k)


def test_hc_smoe_plan_equals_reference_clusters():
    rng = np.random.default_rng(3)
    mean_out = rng.normal(size=(12, 5))
    count = rng.integers(1, 100, 12)
    stats = CalibrationStatistics({2: make_layer(count.tolist(), mean_out=mean_out.tolist())})
    plan = get_method("hc_smoe").plan(stats, 0.5, ExpertConstraints(12, 2))
    assert sorted(sorted(g.members) for g in plan.layers[2].groups) == naive_average_linkage(mean_out, 6)
    for g in plan.layers[2].groups:  # frequency-weighted, most used member first
        assert g.weights == pytest.approx((count[g.members] / count[g.members].sum()).tolist(), abs=1e-12)
        assert list(count[g.members]) == sorted(count[g.members], reverse=True)


@pytest.mark.parametrize("similarity", ["first_order", "second_order"])
def test_m_smoe_matches_brute_force(similarity):
    """Dominants = the K experts with the largest total count; the assignment maximises total
    router-logit similarity (computed here from the raw logits), over all assignments."""
    for seed in range(4):
        rng = np.random.default_rng(seed)
        count = rng.permutation(np.arange(1, 9) * 3)  # distinct counts
        logits = rng.normal(size=(30, 8))
        stats = CalibrationStatistics({0: make_layer(count.tolist(), logits=logits.tolist())})
        plan = get_method("m_smoe", {"similarity": similarity, "dominance": "layer"}).plan(
            stats, 0.75, ExpertConstraints(8, 1))
        unit = logits / np.linalg.norm(logits, axis=0)
        cosine = unit.T @ unit if similarity == "first_order" else reference_second_order([logits])
        dominant = max(itertools.combinations(range(8), 2), key=lambda d: count[list(d)].sum())
        others = [j for j in range(8) if j not in dominant]
        best = max(itertools.product(dominant, repeat=len(others)),
                   key=lambda owners: sum(cosine[j, d] for j, d in zip(others, owners, strict=True)))
        expected = sorted([d] + [j for j, o in zip(others, best, strict=True) if o == d] for d in dominant)
        got = sorted(g.members for g in plan.layers[0].groups)
        assert [g[0] for g in got] == [e[0] for e in expected]  # members[0] is the dominant
        assert [sorted(g) for g in got] == [sorted(e) for e in expected], seed
        for g in plan.layers[0].groups:
            assert g.align == (len(g.members) > 1)
            assert sum(g.weights) == pytest.approx(1.0, abs=1e-12)
            assert g.weights == pytest.approx((count[g.members] / count[g.members].sum()).tolist(), abs=1e-12)


# -- M-SMoE's global dominance ----------------------------------------------------------------
#
# Usage frequency f = count / tokens (layer 1 saw twice the tokens): 0.8 0.6 0.4 0.2 | 1.2 0.6 0.4 0 |
# 1.6 0.3 0.1 0. At ratio 0.5 the model keeps 3 * 2 = 6 dominants: each layer's top expert, then
# 0.6 (layer 0), 0.6 (layer 1) and 0.4 (layer 0, which wins the tie with layer 1's 0.4).
GLOBAL = {0: dict(count=[40, 30, 20, 10], tokens=50), 1: dict(count=[120, 60, 40, 0], tokens=100),
          2: dict(count=[80, 15, 5, 0], tokens=50)}


def global_stats(spec: dict) -> CalibrationStatistics:
    layers = {}
    for i, kw in spec.items():
        layer = make_layer(**kw)
        n = layer.num_experts
        layer.router_gram = torch.eye(n, dtype=torch.float64)  # all experts equally unlike: ties everywhere
        layers[i] = layer
    return CalibrationStatistics(layers)


def test_m_smoe_global_dominance_gives_non_uniform_counts():
    stats = global_stats(GLOBAL)
    plan = get_method("m_smoe").plan(stats, 0.5, ExpertConstraints(4, 2))
    assert plan.groups_per_layer == {0: 3, 1: 2, 2: 1} and plan.total_groups == 6 and not plan.uniform
    assert {i: [g.members[0] for g in lp.groups] for i, lp in plan.layers.items()} == {0: [0, 1, 2], 1: [0, 1],
                                                                                      2: [0]}
    assert groups(plan, 0) == [([0, 3], [0.8, 0.2], True), ([1], [1.0], False), ([2], [1.0], False)]
    assert groups(plan, 1) == [([0, 2, 3], [0.75, 0.25, 0.0], True), ([1], [1.0], False)]
    assert groups(plan, 2) == [([0, 1, 2, 3], [0.8, 0.15, 0.05, 0.0], True)]
    with pytest.raises(ValueError, match="different group counts"):
        _ = plan.num_groups
    assert Plan.load(plan.save(Path(tempfile.mkdtemp()) / "plan.json")) == plan
    # The per-layer rule: two groups everywhere.
    layer = get_method("m_smoe", {"dominance": "layer"}).plan(stats, 0.5, ExpertConstraints(4, 2))
    assert layer.groups_per_layer == {0: 2, 1: 2, 2: 2}
    # Frequencies, not raw counts: had layer 1 seen 50 tokens too, its 60 and 40 would lead.
    same_tokens = global_stats({i: {**kw, "tokens": 50} for i, kw in GLOBAL.items()})
    assert get_method("m_smoe").plan(same_tokens, 0.5, ExpertConstraints(4, 2)).groups_per_layer == {0: 2, 1: 3,
                                                                                                    2: 1}
    # Ratio 0 keeps everything; the most compressed ratio keeps one group per layer.
    assert get_method("m_smoe").plan(stats, 0.0, ExpertConstraints(4, 2)).groups_per_layer == {0: 4, 1: 4, 2: 4}
    assert get_method("m_smoe").plan(stats, 0.5, ExpertConstraints(4, 1)).groups_per_layer == {0: 3, 1: 2, 2: 1}
    assert get_method("m_smoe").plan(stats, 0.75, ExpertConstraints(4, 1)).groups_per_layer == {0: 1, 1: 1, 2: 1}


def reference_global_counts(counts: dict[int, list[int]], tokens: dict[int, int], per_layer: int) -> dict[int, int]:
    """The paper repository's rule, written from its description: each layer's most-used expert
    (first on ties), then the most-used others of all layers (a stable sort, so ties go to the
    earlier layer, then the lower index) up to layers * per_layer dominants."""
    dominant = {(i, max(range(len(c)), key=lambda j, c=c: (c[j], -j))) for i, c in counts.items()}
    others = [(c[j] / tokens[i], i, j) for i, c in counts.items() for j in range(len(c)) if (i, j) not in dominant]
    others.sort(key=lambda t: t[0], reverse=True)  # stable: layer-major order among ties
    dominant |= {(i, j) for _, i, j in others[:len(counts) * per_layer - len(counts)]}
    return {i: sum(1 for li, _ in dominant if li == i) for i in counts}


def mc_smoe_threshold_counts(counts: dict[int, list[int]], per_layer: int) -> dict[int, int]:
    """MC-SMoE's own global rule: frequencies normalised per layer, each layer's top set to 1,
    groups = experts strictly above the frequency ranked layers * per_layer (0-based)."""
    freq = {i: np.array(c, dtype=float) / sum(c) for i, c in counts.items()}
    for f in freq.values():
        f[int(np.argmax(f))] = 1.0
    threshold = np.sort(np.concatenate(list(freq.values())))[::-1][len(counts) * per_layer]
    return {i: int((f > threshold).sum()) for i, f in freq.items()}


def test_m_smoe_global_dominance_matches_the_reference_rules():
    ties = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        n_layers, e = int(rng.integers(2, 6)), 8
        counts = {i: rng.integers(0, 6 if seed % 2 else 1000, e).tolist() for i in range(n_layers)}
        for c in counts.values():
            c[int(rng.integers(e))] += 1  # every layer routed something
        # Real statistics have sum(count) = top_k * tokens in every layer; so here (top_k = 1).
        tokens = {i: sum(c) for i, c in counts.items()}
        stats = global_stats({i: dict(count=c, tokens=tokens[i]) for i, c in counts.items()})
        for ratio in (0.25, 0.5, 0.75):
            per_layer = round(e * (1 - ratio))
            plan = get_method("m_smoe").plan(stats, ratio, ExpertConstraints(e, 2))
            expected = reference_global_counts(counts, tokens, per_layer)
            assert plan.groups_per_layer == expected, (seed, ratio)
            assert plan.total_groups == n_layers * per_layer
            for i, lp in plan.layers.items():  # dominants = each layer's most used, ties by lower index
                assert sorted(g.members[0] for g in lp.groups) == sorted(
                    sorted(range(e), key=lambda j, i=i: (-counts[i][j], j))[:expected[i]])
            flat = sorted((c for cs in counts.values() for c in cs), reverse=True)
            if len(set(flat)) == len(flat):  # no ties anywhere: MC-SMoE's threshold rule agrees
                assert mc_smoe_threshold_counts(counts, per_layer) == expected, (seed, ratio)
            else:
                ties += 1
    assert ties  # the tie-breaking was exercised


def test_m_smoe_global_dominance_keeps_router_groups():
    # Two router groups of four. Layer 0 routes almost only group 0; layer 1 evenly.
    stats = global_stats({0: dict(count=[50, 40, 30, 20, 1, 0, 0, 0], tokens=50),
                          1: dict(count=[10] * 8, tokens=50)})
    constraints = ExpertConstraints(8, 2, n_group=2, topk_group=1)
    plan = get_method("m_smoe").plan(stats, 0.5, constraints)
    # 2 layers x 4 = 8 groups; one seed per (layer, router group), then 0.8, 0.6, 0.4 (layer 0) and a 0.2
    # tie won by layer 1's lowest remaining index.
    assert [[g.members for g in plan.layers[i].groups] for i in (0, 1)] == [
        [[0], [1], [2], [3], [4, 5, 6, 7]],
        [[0, 2, 3], [1], [4, 5, 6, 7]],
    ]
    for lp in plan.layers.values():
        for g in lp.groups:
            assert len({j // 4 for j in g.members}) == 1  # never across router groups
    assert groups(plan, 0)[-1] == ([4, 5, 6, 7], [1.0, 0.0, 0.0, 0.0], True)


# -- constraints --------------------------------------------------------------------------------
def real_router_accepts(kept_count: int) -> bool:
    """Does transformers' GLM group-limited router, shrunk to `kept_count` experts (same n_group,
    topk_group, top_k), run and pick every token's experts inside its topk_group groups?"""
    from transformers import Glm4MoeConfig
    from transformers.models.glm4_moe.modeling_glm4_moe import Glm4MoeTopkRouter

    config = Glm4MoeConfig(n_routed_experts=kept_count, num_experts_per_tok=4, n_group=4, topk_group=2,
                           hidden_size=8)
    router = Glm4MoeTopkRouter(config)
    torch.nn.init.normal_(router.weight, generator=torch.Generator().manual_seed(0))
    try:
        _, _, index = router(torch.randn(64, 8, generator=torch.Generator().manual_seed(1)))
    except RuntimeError:
        return False
    per_group = kept_count // 4
    used_groups = [len({j // per_group for j in row}) for row in index.tolist()]
    return max(used_groups) <= 2


def test_grouped_feasible_counts_match_real_router():
    constraints = ExpertConstraints.from_config({"model_type": "glm4_moe", "n_routed_experts": 16,
                                                 "num_experts_per_tok": 4, "n_group": 4, "topk_group": 2})
    assert (constraints.n_group, constraints.topk_group, constraints.min_per_group) == (4, 2, 2)
    assert constraints.feasible_counts() == [k for k in range(1, 17) if real_router_accepts(k)] == [8, 12, 16]
    assert constraints.target_count(0.25) == 12 and constraints.target_count(0.5) == 8
    assert constraints.target_count(0.0) == 16


@pytest.mark.parametrize("ratio", [0.3, 0.75, 0.9])
def test_infeasible_ratio_message_lists_feasible_counts(ratio):
    constraints = ExpertConstraints(16, 4, n_group=4, topk_group=2, min_per_group=2)
    with pytest.raises(InfeasibleRatioError) as err:
        constraints.target_count(ratio)
    message = str(err.value)
    assert "Feasible kept counts: 8 (ratio 0.5), 12 (ratio 0.25), 16 (ratio 0)." in message
    assert f"ratio {ratio:g}" in message


def test_infeasible_ratio_fails_before_looking_at_statistics():
    empty = CalibrationStatistics({})  # would be a PlanningError if it got that far
    for name in method_names():
        with pytest.raises(InfeasibleRatioError, match="top_k=2"):
            get_method(name).plan(empty, 0.9, ExpertConstraints(8, 2))
    with pytest.raises(InfeasibleRatioError, match=r"\[0, 1\)"):
        ExpertConstraints(8, 2).target_count(1.0)


def test_ungrouped_counts_and_rounding():
    assert ExpertConstraints(8, 2).feasible_counts() == list(range(2, 9))
    assert ExpertConstraints(8, 1).feasible_counts() == list(range(1, 9))
    assert ExpertConstraints(8, 1, min_per_group=2).feasible_counts() == list(range(2, 9))
    assert ExpertConstraints(10, 2).target_count(0.3) == 7  # 0.7 * 10 is 6.999... in floats
    assert ExpertConstraints(7, 2).target_count(0.5) == 4  # halves round up
    assert ExpertConstraints(8, 2).target_count(0.25) == 6
    with pytest.raises(ValueError, match="divide"):
        ExpertConstraints(10, 2, n_group=4)


def test_constraints_from_zoo_configs():
    from harness.standins.zoo import ZOO

    expected = {"qwen3_moe": (8, 2, 1, 1), "mixtral": (8, 2, 1, 1), "ernie4_5_moe": (8, 2, 1, 1),
                "glm4_moe": (8, 2, 1, 2), "glm4_moe_grouped": (16, 4, 4, 2), "deepseek_v3": (8, 2, 1, 2),
                "glm4_moe_lite": (8, 2, 1, 2), "kimi_linear": (8, 2, 1, 2),
                "nemotron_h": (8, 2, 1, 2),
                "llama4_text": (8, 1, 1, 1), "qwen3_5_moe": (8, 2, 1, 1),
                "qwen3_next": (8, 2, 1, 1), "gpt_oss": (8, 2, 1, 1), "minimax_m2": (8, 2, 1, 1)}
    for family, spec in ZOO.items():
        c = ExpertConstraints.from_config({"model_type": spec.model_type, **spec.config})
        assert (c.num_experts, c.top_k, c.n_group, c.min_per_group) == expected[family], family


def test_grouped_pruning_keeps_per_group():
    # Globally the best four are 0-3 (all group 0); each group of four must keep two.
    stats = CalibrationStatistics({1: make_layer([9, 8, 7, 6, 1, 2, 3, 4])})
    plan = get_method("frequency").plan(stats, 0.5, ExpertConstraints(8, 2, n_group=2, topk_group=1))
    assert kept(plan) == {1: [0, 1, 6, 7]}
    assert kept(get_method("frequency").plan(stats, 0.5, ExpertConstraints(8, 2))) == {1: [0, 1, 2, 3]}


def test_grouped_merging_stays_inside_groups():
    # 1-D outputs: 3 (group 0) and 4 (group 1) are the closest pair overall.
    points = [[0.0], [1.0], [10.0], [20.0], [20.5], [30.0], [31.0], [50.0]]
    stats = CalibrationStatistics({1: make_layer([1, 2, 3, 4, 5, 6, 7, 8], mean_out=points)})
    plan = get_method("hc_smoe").plan(stats, 0.5, ExpertConstraints(8, 2, n_group=2, topk_group=2))
    assert groups(plan, 1) == [([2, 1, 0], [3 / 6, 2 / 6, 1 / 6], False), ([3], [1.0], False),
                               ([6, 5, 4], [7 / 18, 6 / 18, 5 / 18], False), ([7], [1.0], False)]
    flat = get_method("hc_smoe").plan(stats, 0.5, ExpertConstraints(8, 2))
    assert [4, 3] in [g.members for g in flat.layers[1].groups]  # ungrouped, they would merge


# -- zero counts, ties, super experts ------------------------------------------------------------
def test_zero_count_experts_score_zero_and_ties_go_to_lower_index():
    layer = make_layer([0, 5, 0, 0], gate_sum=[0, 1, 0, 0], ean_sum=[0, 10, 0, 0], reap_sum=[0, 2, 0, 0])
    for cls in (get_method_class("reap")(), get_method_class("ean")({"variant": "mean"})):
        assert cls.scores(layer).tolist() == [0.0, 2 / 5 if cls.name == "reap" else 2.0, 0.0, 0.0]
    stats = CalibrationStatistics({0: layer, 1: make_layer([0, 0, 0, 0])})
    for name in ["reap", "ean", "frequency", "weighted_frequency"]:
        assert kept(get_method(name).plan(stats, 0.5, ExpertConstraints(4, 2))) == {0: [0, 1], 1: [0, 1]}, name


def test_merging_never_routed_experts():
    """The reference code's rules: a never-routed member weighs 0; a cluster of several members none
    of which was routed merges to a zero expert (0 / eps there); a singleton stays as it is."""
    logits = [[1.0, 0.0, 0.1, 0.2], [0.0, 1.0, 0.9, 0.8]]  # 2 and 3 route like 1
    stats = CalibrationStatistics({0: make_layer([0, 0, 0, 0], logits=logits, mean_out=[[0.0]] * 4)})
    for similarity in ("first_order", "second_order"):
        plan = get_method("m_smoe", {"similarity": similarity}).plan(stats, 0.5, ExpertConstraints(4, 2))
        assert groups(plan, 0) == [([0], [1.0], False), ([1, 2, 3], [0.0] * 3, True)], similarity
        assert plan.layers[0].groups[1].is_zero and not plan.layers[0].groups[0].is_zero
    uniform = get_method("m_smoe", {"unrouted_cluster": "uniform"}).plan(stats, 0.5, ExpertConstraints(4, 2))
    assert groups(uniform, 0) == [([0], [1.0], False), ([1, 2, 3], [1 / 3] * 3, True)]
    # Identical outputs: every distance ties, resolved by lowest indices.
    plan = get_method("hc_smoe").plan(stats, 0.5, ExpertConstraints(4, 2))
    assert groups(plan, 0) == [([0, 1, 2], [0.0] * 3, False), ([3], [1.0], False)]
    plan = get_method("hc_smoe", {"unrouted_cluster": "uniform"}).plan(stats, 0.5, ExpertConstraints(4, 2))
    assert groups(plan, 0) == [([0, 1, 2], [1 / 3] * 3, False), ([3], [1.0], False)]
    mixed = CalibrationStatistics({0: make_layer([4, 0, 0, 1], logits=logits)})
    plan = get_method("m_smoe").plan(mixed, 0.5, ExpertConstraints(4, 2))
    # Dominants 0 and 3 (most used); 1 and 2 route like 3; the unrouted members get weight 0.
    assert groups(plan, 0) == [([0], [1.0], False), ([3, 1, 2], [1.0, 0.0, 0.0], True)]


def test_plan_format_rules():
    from harness.plan import PLAN_FORMAT_VERSION, ExpertGroup, LayerPlan

    single = [ExpertGroup.single(j) for j in range(4)]
    merged = [ExpertGroup(members=[0, 1, 2, 3], weights=[0.25] * 4)]
    # A merge plan may have different group counts per layer; a pruning plan may not.
    plan = Plan(method="m", ratio=0.5, kind="merge", layers={0: LayerPlan(num_experts=4, groups=single),
                                                             1: LayerPlan(num_experts=4, groups=merged)})
    assert plan.groups_per_layer == {0: 4, 1: 1} and plan.format_version == PLAN_FORMAT_VERSION == 2
    with pytest.raises(ValidationError, match="same expert count"):
        Plan(method="p", ratio=0.5, kind="prune", layers={0: LayerPlan(num_experts=4, groups=single),
                                                          1: LayerPlan(num_experts=4, groups=single[:2])})
    with pytest.raises(ValidationError, match="same expert count"):  # version 1 did not allow it
        Plan.model_validate({**plan.model_dump(mode="json"), "format_version": 1})
    with pytest.raises(ValidationError, match="not one this harness reads"):
        Plan.model_validate({**plan.model_dump(mode="json"), "format_version": 3})
    # A version-1 plan (uniform, weights summing to 1) still loads.
    old = Plan.model_validate({**Plan.identity({0: 4, 1: 4}).model_dump(mode="json"), "format_version": 1})
    assert old.num_groups == 4
    # All-zero weights: only for a merge of two or more.
    assert ExpertGroup(members=[2, 3], weights=[0.0, 0.0]).is_zero
    with pytest.raises(ValidationError, match="two or more"):
        ExpertGroup(members=[2], weights=[0.0])
    with pytest.raises(ValidationError, match="sum to 1"):
        ExpertGroup(members=[2, 3], weights=[0.5, 0.0])


def test_super_expert_rule():
    base = [1.0, 1.1, 0.9, 1.2, 1.0, 0.8, 1.05, 0.95]
    stats = CalibrationStatistics({
        1: make_layer([5] * 8, max_act=base[:3] + [50.0] + base[4:]),
        2: make_layer([5] * 7 + [0], max_act=base[:5] + [8.0, 1.0, 99.0]),  # 7 never routed
    })
    # Pooled: 16 values; 99 is from an unrouted expert (still counts for the thresholds).
    values = np.array(base[:3] + [50.0] + base[4:] + base[:5] + [8.0, 1.0, 99.0])
    assert np.quantile(values, 0.995) > 50.0  # q=0.995 alone: nothing routed clears it
    assert super_experts(stats) == {}
    assert np.quantile(values, 0.9) == pytest.approx(29.0)  # 8 + 0.5 * (50 - 8)
    assert super_experts(stats, quantile=0.9) == {1: [3]}  # threshold max(29, 0.1 * 99)
    assert super_experts(stats, quantile=0.5) == {1: [3]}  # threshold max(~1, 9.9)
    assert super_experts(stats, quantile=0.5, max_fraction=0.05, layers="all") == {1: [3], 2: [5]}  # max(~1, 4.95)
    # The paper code's rule looks only at the first int(0.75 * 2) = 1 MoE layer (thresholds still pooled).
    assert super_experts(stats, quantile=0.5, max_fraction=0.05) == {1: [3]}


def test_super_experts_signed_or_absolute():
    """An expert whose outlier is negative: the signed maximum (the paper code's) misses it, |max| finds it."""
    layer = make_layer([5] * 8, max_act=[1.0] * 7 + [0.2])
    layer.max_abs_act = torch.tensor([1.0] * 7 + [60.0], dtype=torch.float64)
    stats = CalibrationStatistics({0: layer})
    assert super_experts(stats, quantile=0.9, layers="all") == {}
    assert super_experts(stats, quantile=0.9, layers="all", activation="absolute") == {0: [7]}


def test_protected_super_experts_are_kept():
    count = [50, 40, 30, 1]
    stats = CalibrationStatistics({0: make_layer(count, max_act=[1.0, 1.2, 0.9, 40.0]),
                                   1: make_layer(count, max_act=[1.0, 1.1, 1.0, 1.0])})
    plain = get_method("frequency").plan(stats, 0.5, ExpertConstraints(4, 2))
    guarded = get_method("frequency", {"protect_super_experts": True, "super_expert_quantile": 0.5}).plan(
        stats, 0.5, ExpertConstraints(4, 2))
    assert kept(plain) == {0: [0, 1], 1: [0, 1]}
    assert kept(guarded) == {0: [0, 3], 1: [0, 1]}
    assert guarded.method_config["protect_super_experts"] is True
    with pytest.raises(PlanningError, match="super experts"):
        get_method("reap", {"protect_super_experts": True, "super_expert_quantile": 0.1,
                            "super_expert_max_fraction": 0.01}).plan(stats, 0.5, ExpertConstraints(4, 2))


# -- plans, registry, config ---------------------------------------------------------------------
def full_stats() -> CalibrationStatistics:
    rng = np.random.default_rng(11)

    def one():
        count = rng.integers(0, 40, 8).astype(float)
        norm = rng.uniform(0.5, 3, 8)
        gate = rng.uniform(0.05, 0.9, 8)
        return make_layer(count.tolist(), (count * gate).tolist(), (count * norm).tolist(),
                          (count * gate * norm).tolist(), rng.uniform(0, 5, 8).tolist(),
                          rng.normal(size=(8, 4)).tolist(), rng.normal(size=(20, 8)).tolist())

    layers = {1: one(), 2: one(), 4: one()}
    for layer in layers.values():  # REAM's gated outputs
        layer.gated_out_sum = torch.tensor(rng.normal(size=(8, 4)), dtype=torch.float64)
    return CalibrationStatistics(layers)


@pytest.mark.parametrize("name", PRUNING + MERGING)
def test_plans_validate_and_round_trip(name, tmp_path):
    stats = full_stats()
    for ratio in (0.0, 0.25, 0.5):
        plan = get_method(name).plan(stats, ratio, ExpertConstraints(8, 2), calibration_key="abc")
        assert plan.total_groups == 3 * round(8 * (1 - ratio)) and sorted(plan.layers) == [1, 2, 4]
        assert plan.uniform or name == "m_smoe"
        loaded = Plan.load(plan.save(tmp_path / f"{name}-{ratio}.json"))
        assert loaded == plan and loaded.plan_hash() == plan.plan_hash()
        Plan.model_validate(plan.model_dump(mode="json"))
        for lp in plan.layers.values():
            assert [g.members[0] for g in lp.groups] == sorted(g.members[0] for g in lp.groups)
            for g in lp.groups:
                assert sum(g.weights) == pytest.approx(1.0, abs=1e-12)
    # Ratio 0 keeps everything in place.
    assert all(lp.kept == list(range(8)) for lp in get_method(name).plan(stats, 0.0, ExpertConstraints(8, 2))
               .layers.values())


def test_missing_statistics_and_mismatched_experts():
    plain = CalibrationStatistics({0: make_layer([1, 2, 3, 4])})
    with pytest.raises(PlanningError, match="extras including 'mean_out'"):
        get_method("hc_smoe").plan(plain, 0.5, ExpertConstraints(4, 2))
    with pytest.raises(PlanningError, match="extras including 'router_similarity'"):
        get_method("m_smoe").plan(plain, 0.5, ExpertConstraints(4, 2))
    with pytest.raises(PlanningError, match="4 experts but the model has 8"):
        get_method("reap").plan(plain, 0.5, ExpertConstraints(8, 2))
    assert get_method_class("hc_smoe").needs == {"mean_out"}
    assert get_method_class("m_smoe").needs == {"router_similarity"}
    with pytest.raises(PlanningError, match="extras including 'gated_out'"):
        get_method("ream").plan(plain, 0.5, ExpertConstraints(4, 2))
    assert all(get_method_class(n).needs == frozenset() for n in PRUNING)


def test_registry_and_config_validation():
    assert method_names() == sorted(PRUNING + MERGING)
    with pytest.raises(UnknownMethodError, match="known methods: ean, frequency, hc_smoe"):
        get_method("reep")
    with pytest.raises(ValidationError, match="protect_super_expert\n"):
        get_method("reap", {"protect_super_expert": True})
    with pytest.raises(ValidationError, match="variant"):
        get_method("ean", {"variant": "median"})
    with pytest.raises(ValidationError, match="seed"):
        get_method("random", {"seed": -1})
    assert get_method("ean", {"variant": "mean"}).config.variant == "mean"
    for name in PRUNING:
        assert get_method_class(name).kind == "prune" and issubclass(get_method_class(name), PruningMethod)
    for name in MERGING:
        assert get_method_class(name).kind == "merge"


class KeepLast(PruningMethod):
    """A plugin method (registered through the entry-point group in the test below)."""

    name = "keep_last"

    class Config(PruningMethod.Config):
        pass

    def scores(self, layer: LayerStatistics) -> torch.Tensor:
        return torch.arange(layer.num_experts, dtype=torch.float64)


def test_entry_point_plugins(monkeypatch):
    real = importlib.metadata.entry_points

    def fake(**kwargs):
        if kwargs.get("group") == "harness.methods":
            here = "tests.methods.test_methods:KeepLast"
            return [importlib.metadata.EntryPoint("keep_last", here, "harness.methods"),
                    importlib.metadata.EntryPoint("reap", here, "harness.methods")]
        return real(**kwargs)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    assert "keep_last" in method_names()
    plan = get_method("keep_last").plan(CalibrationStatistics({0: make_layer([9, 1, 1, 1])}), 0.5,
                                        ExpertConstraints(4, 2))
    assert kept(plan) == {0: [2, 3]}
    assert get_method_class("reap").__name__ == "REAP"  # plugins cannot shadow a built-in


# -- real statistics from every zoo family ----------------------------------------------------------
@pytest.fixture(scope="module")
def zoo_stats(zoo_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.archs import get_arch
    from harness.calibration.run import calibrate_loaded
    from harness.standins.zoo import ZOO
    from tests.standins.test_zoo import TEXTS

    found = {}
    for family in ZOO:
        path = zoo_dir / family
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        batch = AutoTokenizer.from_pretrained(path)(TEXTS, return_tensors="pt", padding=True)
        arch = get_arch(path)
        layers = calibrate_loaded(model, arch, batch.input_ids, batch.attention_mask,
                                  extras={"mean_out", "gated_out", "router_similarity"})
        found[family] = (CalibrationStatistics(layers), ExpertConstraints.from_arch(arch))
    return found


def test_every_method_plans_every_zoo_family(zoo_stats):
    for family, (stats, constraints) in zoo_stats.items():
        for name in PRUNING + MERGING:
            for ratio in (0.25, 0.5):
                plan = get_method(name).plan(stats, ratio, constraints)
                kept_count = constraints.target_count(ratio)
                assert plan.total_groups == kept_count * len(stats.layers), (family, name)
                if name != "m_smoe":
                    assert plan.num_groups == kept_count, (family, name)
                assert sorted(plan.layers) == sorted(stats.layers)
                Plan.model_validate_json(plan.model_dump_json())
                size = constraints.group_size
                for lp in plan.layers.values():  # inside one router group, listed group by group
                    owners = [{j // size for j in g.members} for g in lp.groups]
                    assert all(len(o) == 1 for o in owners), (family, name)
                    assert [o.pop() for o in owners] == sorted(min(g.members) // size for g in lp.groups)
                    assert set(min(g.members) // size for g in lp.groups) == set(range(constraints.n_group))
                    if plan.kind == "prune":  # the same count in every router group
                        assert all(sum(1 for g in lp.groups if g.members[0] // size == r) == kept_count //
                                   constraints.n_group for r in range(constraints.n_group)), (family, name)
        if constraints.n_group > 1:
            for ratio in (0.1, 0.3, 0.75):
                with pytest.raises(InfeasibleRatioError, match="Feasible kept counts: 8 .*, 12 .*, 16"):
                    get_method("reap").plan(stats, ratio, constraints)


def test_zoo_methods_follow_their_statistic(zoo_stats):
    """On real statistics, the kept set is the top of the method's own statistic (per group)."""
    stats, constraints = zoo_stats["glm4_moe_grouped"]
    plan = get_method("frequency").plan(stats, 0.5, constraints)
    for i, layer in stats.layers.items():
        for g in range(4):
            members = list(range(4 * g, 4 * g + 4))
            best = sorted(members, key=lambda j: (-layer.count[j].item(), j))[:2]
            assert sorted(best) == [j for j in plan.layers[i].kept if j in members]
    stats, constraints = zoo_stats["qwen3_moe"]
    reap, freq = (get_method(name).plan(stats, 0.5, constraints) for name in ("reap", "frequency"))
    assert kept(reap) != kept(freq)  # uneven zoo routing: the scores disagree somewhere


def test_zoo_m_smoe_global_dominance_follows_the_reference_rule(zoo_stats):
    differs = 0
    for family, (stats, constraints) in zoo_stats.items():
        if constraints.n_group > 1:
            continue  # the reference rule has no router groups (see the grouped test above)
        counts = {i: [int(c) for c in layer.count.tolist()] for i, layer in stats.layers.items()}
        tokens = {i: layer.tokens for i, layer in stats.layers.items()}
        for ratio in (0.25, 0.5):
            kept_count = constraints.target_count(ratio)
            plan = get_method("m_smoe").plan(stats, ratio, constraints)
            assert plan.groups_per_layer == reference_global_counts(counts, tokens, kept_count), (family, ratio)
            differs += not plan.uniform
    assert differs  # uneven zoo routing: the global rule really moves groups between layers


def test_zoo_super_experts_are_kept(zoo_stats):
    changed = 0
    for family, (stats, constraints) in zoo_stats.items():
        # Every layer considered: the pooled maximum always clears q=0.995 on a few dozen experts (with the
        # paper's first-75 % rule a 3-layer zoo model may have its maximum in the excluded last layer).
        protected = super_experts(stats, layers="all")
        assert protected, family
        for name in PRUNING:
            plan = get_method(name, {"protect_super_experts": True, "super_expert_layers": "all"}).plan(
                stats, 0.5, constraints)
            for i, experts in protected.items():
                assert set(experts) <= set(plan.layers[i].kept), (family, name)
            changed += kept(plan) != kept(get_method(name).plan(stats, 0.5, constraints))
    assert changed >= 5  # protection is not vacuous: it overrides the scores in many plans (9 of 35 here)
