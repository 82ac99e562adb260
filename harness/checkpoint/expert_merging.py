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
    return ExpertWeights(gate=expert.gate.to(dtype), up=expert.up.to(dtype), down=expert.down.to(dtype))


def neuron_similarity(reference: ExpertWeights, other: ExpertWeights) -> torch.Tensor:
    """[I, I] inner products of neuron vectors [gate_i | up_i | down[:, i]], summed per projection
    (three matmuls instead of concatenating [I, 3H] features first)."""
    if (reference.gate.shape, reference.down.shape) != (other.gate.shape, other.down.shape):
        raise ValueError(f"cannot align experts of different shapes {tuple(reference.gate.shape)} and "
                         f"{tuple(other.gate.shape)}")
    dtype = compute_dtype(reference.gate, other.gate)
    ref, oth = _as_dtype(reference, dtype), _as_dtype(other, dtype)
    similarity = ref.gate @ oth.gate.T
    similarity.addmm_(ref.up, oth.up.T)
    similarity.addmm_(ref.down.T, oth.down)
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
    """The same function with its intermediate neurons reordered."""
    return ExpertWeights(gate=expert.gate[perm], up=expert.up[perm], down=expert.down[:, perm])


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
    dtype = compute_dtype(*(t for e in experts for t in (e.gate, e.up, e.down)))
    first = _as_dtype(experts[0], dtype)
    if total == 0.0:
        return ExpertWeights(gate=torch.zeros_like(first.gate), up=torch.zeros_like(first.up),
                             down=torch.zeros_like(first.down))
    gate, up, down = (first.gate * weights[0], first.up * weights[0], first.down * weights[0])
    for expert, weight in zip(experts[1:], weights[1:], strict=True):
        member = _as_dtype(expert, dtype)
        if align:
            member = permute_neurons(member, alignment_permutation(first, member))
        gate.add_(member.gate, alpha=weight)
        up.add_(member.up, alpha=weight)
        down.add_(member.down, alpha=weight)
    return ExpertWeights(gate=gate, up=up, down=down)
