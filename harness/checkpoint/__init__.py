"""Plan + source checkpoint -> compressed checkpoint, streamed tensor by tensor.

The writer never holds the model: each output shard is written from a header computed
up front, then tensor after tensor. Tensors the plan leaves alone, renames or slices along
their first dimension are copied as byte ranges of the source file; only tensors that
change (correction biases sliced along their last dimension, merged experts) pass through
torch, one merge group at a time. So memory stays near the size of one merge group, and
FP8 / packed-int4 expert tensors travel with their experts whatever their companion
tensors are called.

Merged checkpoints use the paper's materialisation, "shared_slots": every router slot
is kept and the members of a cluster hold identical (merged) weights; parameter counts
count each distinct expert once. So layers may have different numbers of distinct
experts (M-SMoE's global dominance) while config.json keeps one expert count.

One job per module:

    shards          the project's safetensors reader (ShardReader): headers, byte ranges, tensors by key/prefix
    identity        model_fingerprint: a checkpoint's identity for cache keys
    roles           TensorRoles: what each key of a family's checkpoint is (expert, fused, router, bias)
    outputs         OutputTensor: one tensor of the new checkpoint and how it is produced
    plan_outputs    plan -> every OutputTensor, checked before anything is written (pruning here)
    merge_outputs   the outputs of merged layers (per-expert keys, block FP8, fused tensors)
    expert_merging  weight arithmetic: weighted averages and neuron alignment of experts
    shard_writer    output shards, byte ranges by sendfile, computed tensors one group at a time
    counting        parameter counts from a checkpoint's tensors
    writer          write_checkpoint: the directory (config rewrite, side files, recipe), atomically

Where a family stores its experts (names, fused orientation, config nesting) comes from its
adapter in `harness.archs`; quantisation formats from `harness.checkpoint.quantisation`.
"""

from typing import Any

# Imported on first use (PEP 562): `harness.checkpoint.hub` and the shard reader serve validation and dry runs,
# which should not pay for torch (the writer's and the counter's import).
_EXPORTS = {
    "ParameterCounts": "counting", "count_parameters": "counting", "parameter_counts": "counting",
    "CheckpointError": "errors", "model_fingerprint": "identity", "TensorRoles": "roles",
    "ShardReader": "shards", "TensorInfo": "shards",
    "MATERIALISATIONS": "writer", "CheckpointInfo": "writer", "write_checkpoint": "writer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'harness.checkpoint' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"harness.checkpoint.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
