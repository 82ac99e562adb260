"""Expert merging: frequency-weighted averaging, optionally after neuron alignment (M-SMoE).

The intermediate neurons of an expert can be permuted (rows of gate/up, columns of down)
without changing what it computes, so two experts trained apart may hold similar neurons
in different places. Alignment finds, by linear assignment, the permutation of each
member's neurons that best matches the dominant expert (`members[0]`) before averaging.

This is weight arithmetic on the canonical view only; FP8 checkpoints are merged by
dequantising, merging here in float and quantising again with the same block layout
(`harness.checkpoint.merge_outputs`, with the format arithmetic of `harness.checkpoint.quantisation`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from harness.archs.base import ExpertWeights


# -- alignment -------------------------------------------------------------------------------
def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 only when some input already is; float32 otherwise (bf16/fp16/fp32 weights).

    The result is cast back to the storage dtype, so float32 arithmetic loses nothing that
    storage keeps, and it halves the memory traffic that dominates merging time.
    """
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _as_dtype(expert: ExpertWeights, dtype: torch.dtype) -> ExpertWeights:
    return ExpertWeights.from_tensors({name: t.to(dtype) for name, t in expert.tensors().items()})


def neuron_similarity(reference: ExpertWeights, other: ExpertWeights) -> torch.Tensor:
    """[I, I] inner products of neuron vectors [gate_i | up_i | down[:, i]], summed per projection
    (three matmuls instead of concatenating [I, 3H] features first); ungated experts: [up_i | down[:, i]]."""
    if (reference.up.shape, reference.down.shape) != (other.up.shape, other.down.shape) or \
            (reference.gate is None) != (other.gate is None):
        raise ValueError(f"cannot align experts of different shapes {tuple(reference.up.shape)} and "
                         f"{tuple(other.up.shape)}, or a gated with an ungated one")
    dtype = compute_dtype(reference.up, other.up)
    ref, oth = _as_dtype(reference, dtype), _as_dtype(other, dtype)
    if ref.gate is None:
        similarity = ref.up @ oth.up.T
    else:
        similarity = ref.gate @ oth.gate.T
        similarity.addmm_(ref.up, oth.up.T)
    similarity.addmm_(ref.down.T, oth.down)
    for name in ("gate_bias", "up_bias"):  # a biased neuron's bias is part of its vector
        a, b = getattr(ref, name), getattr(oth, name)
        if a is not None and b is not None:
            similarity.add_(torch.outer(a, b))
    return similarity


def alignment_permutation(reference: ExpertWeights, other: ExpertWeights) -> torch.Tensor:
    """perm such that neuron i of the aligned `other` is its neuron perm[i].

    Maximises the summed inner product between matched neuron vectors (weight matching),
    solved exactly by `scipy.optimize.linear_sum_assignment`.
    """
    from scipy.optimize import linear_sum_assignment

    similarity = neuron_similarity(reference, other).double().numpy()
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    perm = torch.empty(len(rows), dtype=torch.long)
    perm[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
    return perm


def permute_neurons(expert: ExpertWeights, perm: torch.Tensor) -> ExpertWeights:
    """The same function with its intermediate neurons reordered (the down bias is per output, unchanged)."""
    return ExpertWeights(gate=None if expert.gate is None else expert.gate[perm], up=expert.up[perm],
                         down=expert.down[:, perm],
                         gate_bias=None if expert.gate_bias is None else expert.gate_bias[perm],
                         up_bias=None if expert.up_bias is None else expert.up_bias[perm],
                         down_bias=expert.down_bias)


# -- merging ---------------------------------------------------------------------------------
def merge_experts(experts: Sequence[ExpertWeights], weights: Sequence[float], *, align: bool = False
                  ) -> ExpertWeights:
    """Weighted average of experts; with `align`, every member is first permuted onto experts[0].

    Computed in `compute_dtype` of the inputs (float32 unless they are float64) and returned
    in it: the caller casts to its storage dtype. All-zero weights (a plan's zero expert: a
    cluster none of whose members was routed, merged as the reference code does) give zeros.
    """
    if len(experts) != len(weights) or not experts:
        raise ValueError(f"need one weight per expert, got {len(experts)} experts and {len(weights)} weights")
    total = float(sum(weights))
    if any(w < 0 for w in weights) or (abs(total - 1.0) > 1e-6 and total != 0.0):
        raise ValueError(f"merge weights must be >= 0 and sum to 1 (or all be 0), got {list(weights)}")
    fields = sorted(experts[0].tensors())
    if any(sorted(e.tensors()) != fields for e in experts):
        raise ValueError("cannot merge experts with and without biases")
    dtype = compute_dtype(*(t for e in experts for t in e.tensors().values()))
    first = _as_dtype(experts[0], dtype)
    if total == 0.0:
        return ExpertWeights.from_tensors({name: torch.zeros_like(t) for name, t in first.tensors().items()})
    merged = {name: t * weights[0] for name, t in first.tensors().items()}
    for expert, weight in zip(experts[1:], weights[1:], strict=True):
        member = _as_dtype(expert, dtype)
        if align:
            member = permute_neurons(member, alignment_permutation(first, member))
        for name, t in member.tensors().items():
            merged[name].add_(t, alpha=weight)
    return ExpertWeights.from_tensors(merged)
