"""Plan -> every tensor of the new checkpoint and its producer, checked before anything is written.

A tensor the plan leaves alone, or renames (pruned experts renumbered), or slices along its
first dimension (router rows, fused experts) becomes byte ranges of its source file; only
tensors that change (correction biases sliced along their last dimension, merged experts)
are computed, one merge group at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.archs.base import MoEArch
from harness.checkpoint.errors import CheckpointError
from harness.checkpoint.merge_outputs import merged_layer
from harness.checkpoint.outputs import OutputTensor, copied, last_selected, rows_selected
from harness.checkpoint.quantisation import PACKED_NAME, quantization_config
from harness.checkpoint.roles import LayerTensors, TensorRoles
from harness.checkpoint.shards import ShardReader
from harness.plan import Plan


@dataclass
class OutputPlan:
    """What the writer writes."""

    outputs: list[OutputTensor]
    dropped: list[str]  # source tensors left out (layers beyond num_hidden_layers)
    new_count: int  # router slots per layer
    quantisation: str | None


def plan_outputs(plan: Plan, src: ShardReader, roles: TensorRoles, arch: MoEArch, config: dict) -> OutputPlan:
    """Every output tensor and its producer; raises before anything is written."""
    layers = roles.inventory(src.tensors)
    _check_layers(plan, layers, src, arch)
    new_count = plan.num_groups if plan.kind == "prune" else arch.num_experts
    _check_routing(plan, arch, new_count)
    block = quantization_config(config).get("weight_block_size")
    outputs: list[OutputTensor] = []
    dropped: list[str] = []
    for key, info in src.tensors.items():
        role = roles.role(key)
        if role.kind == "other":
            outputs.append(copied(key, info))
        elif role.kind == "extra_layer":
            dropped.append(key)
        elif plan.kind == "merge" and role.kind in ("router", "bias"):
            outputs.append(copied(key, info))  # shared slots: every router slot stays
        elif role.kind == "router":
            kept = plan.layers[role.layer].kept
            if not info.shape or info.shape[0] != arch.num_experts:
                raise CheckpointError(f"router tensor {key} has shape {list(info.shape)}; expected "
                                      f"{arch.num_experts} rows (one per expert) to slice")
            outputs.append(rows_selected(key, info, kept))
        elif role.kind == "bias":
            if not info.shape or info.shape[-1] != arch.num_experts:
                raise CheckpointError(f"correction bias {key} has shape {list(info.shape)}; expected its last "
                                      f"dimension to be the {arch.num_experts} experts")
            outputs.append(last_selected(key, info, plan.layers[role.layer].kept))
    for i, tensors in layers.items():
        layer_plan = plan.layers[i]
        if plan.kind == "prune":
            outputs += _pruned_layer(roles, src, i, tensors, layer_plan.kept)
        else:
            outputs += merged_layer(roles, src, arch, i, tensors, layer_plan.groups, block)
    return OutputPlan(outputs, dropped, new_count, _quantisation_name(src, config))


def _pruned_layer(roles: TensorRoles, src: ShardReader, layer: int, tensors: LayerTensors, kept: list[int]
                  ) -> list[OutputTensor]:
    outputs = []
    for n, j in enumerate(kept):
        for name, key in tensors.experts.get(j, {}).items():
            outputs.append(copied(key, src.tensors[key], roles.expert_key(layer, n, name)))
    for key in tensors.fused.values():
        outputs.append(rows_selected(key, src.tensors[key], kept))
    return outputs


def _check_layers(plan: Plan, layers: dict[int, LayerTensors], src: ShardReader, arch: MoEArch) -> None:
    missing, extra = sorted(set(layers) - set(plan.layers)), sorted(set(plan.layers) - set(layers))
    if missing or extra:
        raise CheckpointError(f"the plan does not match the checkpoint's MoE layers: checkpoint layers without a "
                              f"plan {missing}, plan layers without routed experts {extra}. "
                              f"Was the plan made for this model?")
    for i, tensors in layers.items():
        expected = plan.layers[i].num_experts
        if tensors.experts and sorted(tensors.experts) != list(range(expected)):
            raise CheckpointError(f"layer {i} stores experts {sorted(tensors.experts)[:5]}... "
                                  f"({len(tensors.experts)} of them) but the plan expects {expected}")
        for name, key in tensors.fused.items():
            if src.tensors[key].shape[0] != expected:
                raise CheckpointError(f"layer {i}: fused expert tensor {name} has {src.tensors[key].shape[0]} "
                                      f"experts, the plan expects {expected}")
        if expected != arch.num_experts:
            raise CheckpointError(f"layer {i}: the plan has {expected} experts, config.json says {arch.num_experts}")


def _check_routing(plan: Plan, arch: MoEArch, new_count: int) -> None:
    """The compressed routers must still work: the same rule the methods plan with."""
    from harness.methods.constraints import ExpertConstraints

    constraints = ExpertConstraints.from_arch(arch)
    reason = constraints.why_infeasible(new_count)
    if reason is not None:
        raise CheckpointError(f"the plan keeps {new_count} of {arch.num_experts} experts per layer, which the "
                              f"router cannot use: {reason}")
    if constraints.n_group > 1 and plan.kind == "prune":
        per_new = new_count // constraints.n_group
        for i, layer_plan in plan.layers.items():
            for n, j in enumerate(layer_plan.kept):
                if j // constraints.group_size != n // per_new:
                    raise CheckpointError(
                        f"layer {i}: new expert {n} (original {j}) would move from router group "
                        f"{j // constraints.group_size} to group {n // per_new}; with n_group="
                        f"{constraints.n_group} a pruning plan must keep {per_new} experts of every group, "
                        f"listed group by group")


def _quantisation_name(src: ShardReader, config: dict) -> str | None:
    names = {key.rsplit(".", 1)[-1] for key in src.tensors}
    if PACKED_NAME in names:
        return "packed-int (compressed-tensors)"
    if any(info.dtype.startswith("F8") for info in src.tensors.values()):
        return "fp8"
    method = quantization_config(config).get("quant_method")
    return str(method) if method else None
