"""A compression plan: the one interface between methods and the checkpoint writer.

Per MoE layer (keyed by decoder-layer index, as in the calibration statistics), the
groups of original experts that become each new expert, with merge weights. Pruning
is groups of one. A plan is plain JSON, saved beside the checkpoint, so a new method
only has to produce one of these.

Format versions: 1 had the same group count in every layer and merge weights summing
to 1. Version 2 (this one) also allows, in merge plans only, layers with different group
counts (merged checkpoints keep every router slot, so vLLM still sees one expert count:
M-SMoE's global dominance needs this) and groups whose weights are all 0 (a "zero
expert": the merged weights are zero, what the reference code's frequency-weighted
average gives a cluster none of whose members was routed). Version-1 plans still load.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.util.atomic import atomic_write

PLAN_FORMAT_VERSION = 2


class ExpertGroup(BaseModel):
    """Original experts that become one new expert.

    `weights` are the merge weights: >= 0 and summing to 1, or (merge groups of two or
    more only) all 0, which makes the merged expert zero (`is_zero`). With `align`, every
    member's intermediate neurons are permuted to match `members[0]` (the dominant expert)
    before averaging, as M-SMoE does.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    members: list[int] = Field(min_length=1)
    weights: list[float]
    align: bool = False

    @model_validator(mode="after")
    def _check(self) -> ExpertGroup:
        if len(self.weights) != len(self.members):
            raise ValueError(f"group {self.members}: {len(self.weights)} weights for {len(self.members)} members")
        if len(set(self.members)) != len(self.members):
            raise ValueError(f"group {self.members} repeats an expert")
        if any(w < 0 for w in self.weights):
            raise ValueError(f"group {self.members}: merge weights must be >= 0, got {self.weights}")
        if self.is_zero:
            if len(self.members) < 2:
                raise ValueError(f"group {self.members}: only a merge of two or more experts may have all-zero "
                                 "weights (a zero expert)")
        elif abs(sum(self.weights) - 1.0) > 1e-6:
            raise ValueError(f"group {self.members}: merge weights must sum to 1 (or all be 0), got {self.weights}")
        return self

    @property
    def is_zero(self) -> bool:
        """All weights 0: the merged expert is zero (see the module docstring)."""
        return all(w == 0 for w in self.weights)

    @classmethod
    def single(cls, expert: int) -> ExpertGroup:
        return cls(members=[expert], weights=[1.0])


class LayerPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    num_experts: int  # experts in the source layer
    groups: list[ExpertGroup]  # one per new expert, in new-expert order

    @model_validator(mode="after")
    def _check(self) -> LayerPlan:
        seen = [j for g in self.groups for j in g.members]
        if len(seen) != len(set(seen)):
            raise ValueError("an expert appears in more than one group")
        if any(not 0 <= j < self.num_experts for j in seen):
            raise ValueError(f"expert index outside 0..{self.num_experts - 1}")
        return self

    @property
    def is_pruning(self) -> bool:
        return all(len(g.members) == 1 for g in self.groups)

    @property
    def kept(self) -> list[int]:
        """Pruning: the surviving original experts in new order."""
        return [g.members[0] for g in self.groups]


class Plan(BaseModel):
    """What to do to every MoE layer of one model."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = PLAN_FORMAT_VERSION
    method: str
    method_config: dict[str, Any] = Field(default_factory=dict)
    ratio: float = Field(ge=0.0, lt=1.0)
    kind: Literal["prune", "merge"]
    calibration_key: str = ""
    layers: dict[int, LayerPlan]

    @property
    def groups_per_layer(self) -> dict[int, int]:
        """New (distinct) experts of every layer."""
        return {i: len(lp.groups) for i, lp in self.layers.items()}

    @property
    def total_groups(self) -> int:
        """New (distinct) experts over all layers."""
        return sum(self.groups_per_layer.values())

    @property
    def uniform(self) -> bool:
        """Every layer has the same group count (always so for pruning plans)."""
        return len(set(self.groups_per_layer.values())) <= 1

    @property
    def num_groups(self) -> int:
        """New expert count of every layer; a plan whose layers differ (a merge plan) has none."""
        if not self.uniform:
            raise ValueError(f"this {self.method} plan has different group counts per layer "
                             f"({self.groups_per_layer}); use groups_per_layer or total_groups")
        return len(next(iter(self.layers.values())).groups)

    @model_validator(mode="after")
    def _same_count(self) -> Plan:
        if not 1 <= self.format_version <= PLAN_FORMAT_VERSION:
            raise ValueError(f"plan format_version {self.format_version} is not one this harness reads "
                             f"(1..{PLAN_FORMAT_VERSION})")
        counts = set(self.groups_per_layer.values())
        if len(counts) > 1 and (self.kind == "prune" or self.format_version < 2):
            # A pruned layer's expert count is the router's size, which vLLM needs to be the same everywhere.
            raise ValueError(f"every layer of a pruning plan must keep the same expert count, got {sorted(counts)}")
        if self.kind == "prune" and not all(lp.is_pruning for lp in self.layers.values()):
            raise ValueError("a pruning plan must have groups of one expert")
        if self.kind == "merge":
            for i, lp in self.layers.items():
                covered = sorted(j for g in lp.groups for j in g.members)
                if covered != list(range(lp.num_experts)):
                    raise ValueError(f"merge plan layer {i}: every original expert must belong to one group")
        return self

    def plan_hash(self) -> str:
        """Content hash of what the writer does (not of how the plan was named)."""
        body = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        text = json.dumps(self.model_dump(mode="json"), indent=1, sort_keys=True) + "\n"
        atomic_write(path, lambda p: Path(p).write_text(text))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.model_validate_json(Path(path).read_text())

    @classmethod
    def identity(cls, num_experts_by_layer: dict[int, int], method: str = "identity") -> Plan:
        """The 0 % plan: every expert kept in place."""
        layers = {i: LayerPlan(num_experts=e, groups=[ExpertGroup.single(j) for j in range(e)])
                  for i, e in num_experts_by_layer.items()}
        return cls(method=method, ratio=0.0, kind="prune", layers=layers)
