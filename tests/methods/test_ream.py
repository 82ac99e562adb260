"""REAM: its plans against a hand-worked example and a brute-force re-implementation of the reference
code's definition (plain loops and numpy, from raw router logits and gated outputs), and a REAM
checkpoint of a zoo model checked tensor by tensor and logit by logit against the plan."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from harness.calibration.statistics import CalibrationStatistics, LayerStatistics
from harness.methods import get_method, get_method_class
from harness.methods.base import PlanningError
from harness.methods.constraints import ExpertConstraints
from harness.plan import Plan


def make_layer(count, reap, gated_out, logits) -> LayerStatistics:
    """Statistics from plain lists: REAP scores (reap_sum / count), gated outputs [E, H], router logits [T, E]."""
    n = len(count)
    layer = LayerStatistics(num_experts=n, hidden_size=len(gated_out[0]), extras={"gated_out", "router_similarity"})
    layer.count = torch.tensor(count, dtype=torch.float64)
    layer.reap_sum = torch.tensor([r * c for r, c in zip(reap, count, strict=True)], dtype=torch.float64)
    layer.gate_sum = layer.count.clone()
    layer.gated_out_sum = torch.tensor(gated_out, dtype=torch.float64)
    raw = torch.tensor(logits, dtype=torch.float64)
    layer.router_gram, layer.router_logit_sum = raw.T @ raw, raw.sum(0)
    layer.tokens = len(logits)
    return layer


def groups(plan: Plan, layer: int = 0) -> list[tuple[list[int], list[float], bool]]:
    return [(g.members, g.weights, g.align) for g in plan.layers[layer].groups]


# -- the hand-worked example ----------------------------------------------------------------------
#
# Saliency (REAP score): 5 > 2 > 0 > 7 > 6 > 1 > 3 > 4 (never routed: raised to min(0.5, 0.15) = 0.15).
# At 50 % the centroids are 5, 2, 0, 7. Gated outputs: 1 and 3 point like 5, 6 like 2; 4 was never routed
# (a zero vector: cosine 0, distance 1/2 to everyone, so it goes where there is room).
COUNT = [30, 10, 40, 8, 0, 50, 12, 20]
REAP = [0.6, 0.2, 0.8, 0.15, 0.0, 1.0, 0.3, 0.5]
GATED = [[0, 0, 1], [0.9, 0.1, 0], [0, 1, 0], [0.8, 0.2, 0], [0, 0, 0], [1, 0, 0], [0.1, 0.9, 0.1], [-1, 0, 0.2]]
LOGITS = np.random.default_rng(0).normal(size=(12, 8)).tolist()


def _hand_stats() -> CalibrationStatistics:
    return CalibrationStatistics({0: make_layer(COUNT, REAP, GATED, LOGITS)})


def _w(*values):
    return [v / sum(values) for v in values]


@pytest.mark.parametrize(("config", "expected"), [
    # C = 3: centroid 5 takes its two nearest (1, 3); centroid 2 then takes 6 and 4; 0 and 7 stay alone.
    ({"group_size": 3}, [[0], [2, 4, 6], [5, 1, 3], [7]]),
    # C = 16 (the code's default): the most salient centroid takes every other expert.
    ({}, [[0], [2], [5, 1, 3, 4, 6], [7]]),
    # C = 2: one partner each; 0 is equally far (1/2) from 3 and 4 and takes the lower index, 7 gets 4.
    ({"group_size": 2}, [[0, 3], [2, 6], [5, 1], [7, 4]]),
    # C = 0 (MC-SMoE variant): nearest centroid; 4 is equally far from all and joins the most salient.
    ({"group_size": 0}, [[0], [2, 6], [5, 1, 3, 4], [7]]),
])
def test_hand_worked_groups(config, expected):
    plan = get_method("ream", {"gate_similarity": False, **config}).plan(_hand_stats(), 0.5, ExpertConstraints(8, 2))
    assert [g.members for g in plan.layers[0].groups] == expected
    saliency = dict(enumerate(REAP)) | {4: 0.15}
    for g in plan.layers[0].groups:
        assert g.weights == pytest.approx(_w(*(saliency[j] for j in g.members)), abs=1e-12)
        assert g.align == (len(g.members) > 1)


def test_hand_worked_weights_and_options():
    stats = _hand_stats()
    plan = get_method("ream", {"gate_similarity": False, "group_size": 3}).plan(stats, 0.5, ExpertConstraints(8, 2))
    assert groups(plan)[1] == ([2, 4, 6], pytest.approx([0.8 / 1.25, 0.15 / 1.25, 0.3 / 1.25]), True)
    assert groups(plan)[2] == ([5, 1, 3], pytest.approx([1 / 1.35, 0.2 / 1.35, 0.15 / 1.35]), True)
    uniform = get_method("ream", {"gate_similarity": False, "group_size": 3, "weighting": "uniform", "align": False})
    assert groups(uniform.plan(stats, 0.5, ExpertConstraints(8, 2)))[1] == ([2, 4, 6], [1 / 3] * 3, False)
    # Frequency saliency: centroids 5, 2, 0, 7 by count too; the never-routed 4 weighs min(0.5, 8) = 0.5.
    freq = get_method("ream", {"gate_similarity": False, "group_size": 3, "saliency": "frequency"}).plan(
        stats, 0.5, ExpertConstraints(8, 2))
    assert groups(freq)[1] == ([2, 4, 6], pytest.approx(_w(40, 0.5, 12)), True)
    # 25 %: six centroids 5, 2, 0, 7, 6, 1; 3 joins 5 and the unrouted 4 too (C = 16).
    assert [g.members for g in get_method("ream", {"gate_similarity": False}).plan(
        stats, 0.25, ExpertConstraints(8, 2)).layers[0].groups] == [[0], [1], [2], [5, 3, 4], [6], [7]]
    with pytest.raises(PlanningError, match="group_size=1 .* raise group_size to at least 2"):
        get_method("ream", {"group_size": 1}).plan(stats, 0.5, ExpertConstraints(8, 2))
    assert get_method_class("ream").needs == {"gated_out", "router_similarity"}
    assert get_method_class("ream").kind == "merge"


def test_gate_similarity_changes_who_joins_whom():
    """Router-logit columns decide between equally far outputs: 4 (never routed, no output direction)
    joins the centroid whose logit column it copies."""
    logits = np.array(LOGITS)
    logits[:, 4] = logits[:, 7] * 2.0  # same direction as 7's column: gate similarity 1
    stats = CalibrationStatistics({0: make_layer(COUNT, REAP, GATED, logits.tolist())})
    plan = get_method("ream", {"group_size": 0}).plan(stats, 0.5, ExpertConstraints(8, 2))
    assert [7, 4] in [g.members for g in plan.layers[0].groups]


# -- a brute-force re-implementation of the reference code's definition -----------------------------
def reference_ream(count, reap, gated, logits, k, group_size, gate=True, experts=None):
    """REAM's grouping and merge weights, written from its definition with loops and numpy."""
    count, reap, gated, logits = (np.asarray(a, dtype=np.float64) for a in (count, reap, gated, logits))
    n = len(count)
    experts = list(range(n)) if experts is None else experts
    saliency = [reap[j] if count[j] > 0 else 0.0 for j in range(n)]
    positive = [s for s in saliency if s > 0]
    saliency = [s if s > 0 else min(0.5, min(positive)) for s in saliency]
    # the code: columns of the logits normalised, pairwise Euclidean distances, 1 - d / max d
    cols = [logits[:, j] / np.sqrt(sum(v * v for v in logits[:, j])) for j in range(n)]
    d_gate = np.array([[np.sqrt(sum((a - b) ** 2 for a, b in zip(cols[i], cols[j], strict=True))) for j in range(n)]
                       for i in range(n)])
    sim_gate = 1 - d_gate / d_gate.max()
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            ni, nj = np.sqrt(gated[i] @ gated[i]), np.sqrt(gated[j] @ gated[j])
            cos = gated[i] @ gated[j] / (ni * nj) if ni > 0 and nj > 0 else 0.0
            sim = (cos + 1) / 2
            if gate:
                sim = (sim + sim_gate[i, j]) / 2
            dist[i, j] = 1 - sim
    order = sorted(experts, key=lambda j: (-saliency[j], j))
    centroids = order[:k]
    label = {c: c for c in centroids}
    if group_size > 0:
        for c in centroids:
            group = [c]
            for j in sorted(experts, key=lambda j: (dist[c, j], j)):
                if j != c and j not in label:
                    group.append(j)
                if len(group) >= group_size:
                    break
            for j in group:
                label[j] = c
            if len(label) == len(experts):
                break
    else:
        for j in experts:
            if j not in label:
                label[j] = centroids[int(np.argmin([dist[c, j] for c in centroids]))]
    found = []
    for c in centroids:
        members = [c] + [j for j in experts if label[j] == c and j != c]
        total = sum(saliency[j] for j in members)
        found.append((members, [saliency[j] / total for j in members]))
    return sorted(found)


def _random_layer(rng, n, h=6, t=40, unrouted=2):
    count = rng.integers(1, 60, n).astype(float)
    count[rng.choice(n, unrouted, replace=False)] = 0
    reap = rng.uniform(0.05, 2.0, n)
    gated = rng.normal(size=(n, h))
    gated[count == 0] = 0.0  # never routed: no gated output
    logits = rng.normal(size=(t, n)) + rng.normal(size=n)
    return count.tolist(), reap.tolist(), gated.tolist(), logits.tolist()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("group_size", [0, 2, 3, 16])
@pytest.mark.parametrize("gate", [True, False])
def test_plans_equal_the_brute_force_reference(seed, group_size, gate):
    rng = np.random.default_rng(100 + seed)
    count, reap, gated, logits = _random_layer(rng, 12)
    stats = CalibrationStatistics({3: make_layer(count, reap, gated, logits)})
    for ratio in (0.25, 0.5, 0.75):
        k = ExpertConstraints(12, 2).target_count(ratio)
        if group_size and k * group_size < 12:
            continue
        plan = get_method("ream", {"group_size": group_size, "gate_similarity": gate}).plan(
            stats, ratio, ExpertConstraints(12, 2))
        got = sorted((g.members, g.weights) for g in plan.layers[3].groups)
        expected = reference_ream(count, reap, gated, logits, k, group_size, gate)
        assert [m for m, _ in got] == [m for m, _ in expected], (ratio, group_size)
        for (_, w), (_, v) in zip(got, expected, strict=True):
            assert w == pytest.approx(v, abs=1e-12)


def test_router_groups_keep_groups_inside_and_match_the_reference():
    rng = np.random.default_rng(7)
    count, reap, gated, logits = _random_layer(rng, 16, unrouted=3)
    stats = CalibrationStatistics({0: make_layer(count, reap, gated, logits)})
    constraints = ExpertConstraints(16, 2, n_group=4, topk_group=2, min_per_group=2)
    plan = get_method("ream", {"group_size": 2}).plan(stats, 0.5, constraints)
    expected = []
    for g in range(4):  # two centroids per router group; distances (and their scale) over the whole layer
        members = list(range(4 * g, 4 * g + 4))
        expected += reference_ream(count, reap, gated, logits, 2, 2, experts=members)
    got = sorted((g.members, g.weights) for g in plan.layers[0].groups)
    assert [m for m, _ in got] == [m for m, _ in sorted(expected)]
    for (_, w), (_, v) in zip(got, sorted(expected), strict=True):
        assert w == pytest.approx(v, abs=1e-12)


# -- a zoo checkpoint -------------------------------------------------------------------------------
def _neuron_features(gate, up, down):
    return np.concatenate([gate, up, down.T], axis=1)


def _expected_merge(gate_up: torch.Tensor, down: torch.Tensor, members, weights):
    """Members' fused rows permuted onto the first member by weight matching (scipy), then averaged."""
    inter = gate_up.shape[1] // 2
    parts = [(gate_up[j, :inter].double().numpy(), gate_up[j, inter:].double().numpy(), down[j].double().numpy())
             for j in members]
    ref = _neuron_features(*parts[0])
    merged_gu = np.zeros(gate_up.shape[1:])
    merged_down = np.zeros(down.shape[1:])
    for (g, u, d), w in zip(parts, weights, strict=True):
        _, perm = linear_sum_assignment(-(ref @ _neuron_features(g, u, d).T))
        merged_gu += w * np.concatenate([g[perm], u[perm]], axis=0)
        merged_down += w * d[:, perm]
    return torch.from_numpy(merged_gu), torch.from_numpy(merged_down)


def test_zoo_checkpoint_follows_the_plan(zoo_dir, tmp_path):
    """qwen3_moe zoo model, REAM at 50 % with C = 3: every member slot holds the aligned saliency-weighted
    average, routers are untouched, the parameter count is the brute-force count of unique tensors, and
    transformers' logits equal those of the source model with the plan's merged experts put in by hand."""
    from harness.archs import get_arch
    from harness.checkpoint import write_checkpoint
    from harness.compress import plan_from_files as make_plan
    from tests.checkpoint.test_checkpoint import _batch, _load, _logits, _unique_counts
    from tests.checkpoint.test_compress_cli import calibrate

    source = zoo_dir / "qwen3_moe"
    stats_dir = calibrate(source, tmp_path / "stats")
    assert all(layer.gated_out_sum is not None for layer in CalibrationStatistics.load(stats_dir).layers.values())
    plan = make_plan(stats_dir, "ream", 0.5, source, {"group_size": 3})
    assert any(len(g.members) == 3 for lp in plan.layers.values() for g in lp.groups)
    info = write_checkpoint(plan, source, tmp_path / "ream", progress=False)
    model, merged = _load(source), _load(info.path)
    arch = get_arch(source)
    expected_model = _load(source)
    src, out = model.state_dict(), merged.state_dict()
    for key, tensor in src.items():
        if not key.endswith(("experts.gate_up_proj", "experts.down_proj")):
            assert torch.equal(out[key], tensor), key
    for layer in arch.moe_layers(expected_model):
        prefix = f"model.layers.{layer.index}.mlp.experts."
        gate_up, down = src[prefix + "gate_up_proj"], src[prefix + "down_proj"]
        for group in plan.layers[layer.index].groups:
            want_gu, want_down = _expected_merge(gate_up, down, group.members, group.weights)
            for j in group.members:
                torch.testing.assert_close(out[prefix + "gate_up_proj"][j].double(), want_gu, atol=1e-6, rtol=1e-5)
                torch.testing.assert_close(out[prefix + "down_proj"][j].double(), want_down, atol=1e-6, rtol=1e-5)
                with torch.no_grad():
                    layer.experts.gate_up_proj[j] = want_gu.float()
                    layer.experts.down_proj[j] = want_down.float()
    batch = _batch(source)
    torch.testing.assert_close(_logits(merged, batch), _logits(expected_model, batch), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(_logits(merged, batch), _logits(model, batch), atol=1e-3)
    total, distinct = _unique_counts(merged)
    assert (info.total_params, info.recipe["routed_experts"]) == (total, distinct) and distinct == plan.total_groups
    assert info.recipe["method"] == "ream" and info.recipe["method_config"]["group_size"] == 3
    assert json.loads((info.path / "config.json").read_text())["num_experts"] == arch.num_experts  # shared slots
