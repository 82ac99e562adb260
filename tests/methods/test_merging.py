"""Expert merging: alignment is optimal (brute force) and function-preserving; averages and FP8 round trips."""

from __future__ import annotations

import itertools

import pytest
import torch

from harness.archs.base import ExpertWeights
from harness.checkpoint.expert_merging import alignment_permutation, merge_experts, permute_neurons
from harness.checkpoint.quantisation import dequantise_fp8, quantise_fp8, scale_block


def _expert(inter: int, hidden: int, seed: int) -> ExpertWeights:
    g = torch.Generator().manual_seed(seed)
    return ExpertWeights(gate=torch.randn(inter, hidden, generator=g), up=torch.randn(inter, hidden, generator=g),
                         down=torch.randn(hidden, inter, generator=g))


def _forward(e: ExpertWeights, x: torch.Tensor) -> torch.Tensor:
    return (torch.nn.functional.silu(x @ e.gate.T) * (x @ e.up.T)) @ e.down.T


def test_permuting_neurons_keeps_the_function():
    e = _expert(16, 8, 0)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(_forward(permute_neurons(e, perm), x), _forward(e, x), atol=1e-5)


def test_alignment_recovers_a_hidden_permutation():
    ref = _expert(32, 16, 0)
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(3))
    # `other` is ref with its neurons shuffled and a little noise: alignment must undo the shuffle.
    shuffled = permute_neurons(ref, perm)
    noise = _expert(32, 16, 4)
    other = ExpertWeights(shuffled.gate + 0.01 * noise.gate, shuffled.up + 0.01 * noise.up,
                          shuffled.down + 0.01 * noise.down)
    found = alignment_permutation(ref, other)
    # Neuron i of the aligned expert is other's neuron found[i], which was ref's neuron perm[found[i]].
    assert torch.equal(perm[found], torch.arange(32))


@pytest.mark.parametrize("seed", range(4))
def test_alignment_is_optimal_by_brute_force(seed):
    ref, other = _expert(6, 4, 10 + seed), _expert(6, 4, 20 + seed)
    a = torch.cat([ref.gate, ref.up, ref.down.T], 1).double()
    b = torch.cat([other.gate, other.up, other.down.T], 1).double()

    def score(p):
        return float((a * b[list(p)]).sum())

    best = max(itertools.permutations(range(6)), key=score)
    found = alignment_permutation(ref, other)
    assert score(found.tolist()) == pytest.approx(score(best), rel=1e-12)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-6), (torch.float64, 1e-12), (torch.bfloat16, 1e-6)])
def test_weighted_average_matches_hand_computation(dtype, atol):
    experts = [_expert(4, 3, i) for i in range(3)]
    a, b, c = (ExpertWeights(*(t.to(dtype) for t in (e.gate, e.up, e.down))) for e in experts)
    merged = merge_experts([a, b, c], [0.5, 0.3, 0.2])
    for name in ("gate", "up", "down"):
        expected = 0.5 * getattr(a, name).double() + 0.3 * getattr(b, name).double() + 0.2 * getattr(c, name).double()
        assert torch.allclose(getattr(merged, name).double(), expected, atol=atol)
    # float64 only for float64 inputs; bf16 is averaged in float32, not rounded in between.
    assert merged.gate.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    # The inputs are not modified in place.
    assert torch.equal(a.gate.double(), _expert(4, 3, 0).gate.to(dtype).double())


def test_aligned_merge_of_a_shuffled_copy_is_the_original():
    ref = _expert(16, 8, 5)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(6))
    copy = permute_neurons(ref, perm)
    merged = merge_experts([ref, copy], [0.4, 0.6], align=True)
    unaligned = merge_experts([ref, copy], [0.4, 0.6], align=False)
    assert torch.allclose(merged.gate, ref.gate, atol=1e-6)
    assert torch.allclose(merged.down, ref.down, atol=1e-6)
    assert not torch.allclose(unaligned.gate, ref.gate, atol=1e-2)


def test_merge_rejects_bad_weights():
    with pytest.raises(ValueError, match="sum to 1"):
        merge_experts([_expert(2, 2, 0), _expert(2, 2, 1)], [0.5, 0.6])
    with pytest.raises(ValueError, match="one weight per expert"):
        merge_experts([_expert(2, 2, 0)], [0.5, 0.5])
    with pytest.raises(ValueError, match=">= 0"):
        merge_experts([_expert(2, 2, 0), _expert(2, 2, 1)], [1.5, -0.5])


@pytest.mark.parametrize("align", [False, True])
def test_all_zero_weights_give_a_zero_expert(align):
    """A plan's zero expert (a cluster none of whose members was routed, as the reference merges it)."""
    b = _expert(8, 4, 1)
    experts = [_expert(8, 4, 0), ExpertWeights(gate=b.gate.double(), up=b.up.double(), down=b.down.double())]
    merged = merge_experts(experts, [0.0, 0.0], align=align)
    assert merged.gate.dtype == torch.float64  # the compute dtype, as for any merge
    for name in ("gate", "up", "down"):
        assert torch.equal(getattr(merged, name), torch.zeros_like(getattr(experts[0], name), dtype=torch.float64))


def test_fp8_block_dequantisation_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    q = (torch.randn(70, 100, generator=g) * 50).to(torch.float8_e4m3fn)
    scale = torch.rand(3, 4, generator=g) + 0.1  # blocks of 32 x 32, ragged at the edges
    got = dequantise_fp8(q, scale, [32, 32])
    expected = torch.empty(70, 100)
    for r in range(70):
        for c in range(100):
            expected[r, c] = q[r, c].float() * scale[r // 32, c // 32]
    assert torch.equal(got, expected)


def test_fp8_round_trip_error_is_within_fp8_precision():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 96, generator=g) * torch.logspace(-3, 1, 96)[None, :]
    q, scale = quantise_fp8(w, (2, 3), [32, 32])
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (2, 3) and scale.dtype == torch.float32
    back = dequantise_fp8(q, scale, [32, 32])
    block_scale = scale.repeat_interleave(32, 0).repeat_interleave(32, 1)
    # e4m3: 3 mantissa bits -> relative error <= 2^-4, subnormal spacing 2^-9 times the block scale.
    assert ((back - w).abs() <= w.abs() * 2 ** -4 + block_scale * 2 ** -9).all()
    # Each block's largest magnitude maps to the top of the FP8 range.
    assert (q.float().abs().reshape(2, 32, 3, 32).amax(dim=(1, 3)) == 448).all()


def test_scale_block_inference_and_errors():
    assert scale_block((256, 512), (2, 4)) == (128, 128)
    assert scale_block((300, 200), (3, 2), [128, 128]) == (128, 128)
    assert scale_block((64, 32), (64, 1)) == (1, 32)
    with pytest.raises(ValueError, match="weight_block_size"):
        scale_block((300, 200), (3, 3))
    with pytest.raises(ValueError, match="does not fit"):
        scale_block((300, 200), (2, 2), [128, 128])
