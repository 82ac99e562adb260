"""What every compression method is: a validated config and statistics -> plan at a ratio.

A method never sees checkpoints or storage layouts, only the calibration statistics and
the routing constraints; its output is a `Plan`, which the checkpoint writer applies.
The ratio is checked against the constraints before anything else, so an infeasible
request fails before any work.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict

from harness.calibration.statistics import CalibrationStatistics, LayerStatistics
from harness.methods.constraints import ExpertConstraints
from harness.plan import LayerPlan, Plan


class PlanningError(ValueError):
    """The statistics cannot give a plan (missing statistics, wrong expert count, too many protected experts)."""


class Method(ABC):
    """One compression method. Subclasses set the ClassVars, a nested `Config`, and `plan_layers`."""

    name: ClassVar[str]
    kind: ClassVar[Literal["prune", "merge"]]
    # The optional calibration statistics it reads (harness.calibration.statistics.EXTRAS).
    needs: ClassVar[frozenset[str]] = frozenset()
    # How the figures draw it (harness.results.plots): legend label and colour; None = the name, a colour handed out.
    plot_label: ClassVar[str | None] = None
    plot_colour: ClassVar[str | None] = None

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, config: dict[str, Any] | BaseModel | None = None):
        if isinstance(config, self.Config):
            self.config = config
        else:
            data = config.model_dump() if isinstance(config, BaseModel) else (config or {})
            self.config = self.Config.model_validate(data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config.model_dump()})"

    # -- the one entry point -------------------------------------------------------------
    def plan(self, stats: CalibrationStatistics, ratio: float, constraints: ExpertConstraints, *,
             calibration_key: str = "") -> Plan:
        """The plan that removes `ratio` of the experts of every MoE layer (a merge with global
        dominance: of all MoE layers together, layers keeping different numbers of groups)."""
        kept = constraints.target_count(ratio)  # raises InfeasibleRatioError first
        self.check_statistics(stats, constraints)
        layers = self.plan_layers(stats, kept, constraints)
        return Plan(method=self.name, method_config=self.config.model_dump(mode="json"), ratio=float(ratio),
                    kind=self.kind, calibration_key=calibration_key, layers=layers)

    @abstractmethod
    def plan_layers(self, stats: CalibrationStatistics, kept: int, constraints: ExpertConstraints
                    ) -> dict[int, LayerPlan]:
        """Per MoE layer, `kept` new experts (already checked feasible; `kept` on average for a merge
        that moves groups between layers)."""

    # -- checks ---------------------------------------------------------------------------
    def check_statistics(self, stats: CalibrationStatistics, constraints: ExpertConstraints) -> None:
        """The statistics describe this model and hold what the method needs."""
        if not stats.layers:
            raise PlanningError("the calibration statistics hold no MoE layer")
        for index, layer in sorted(stats.layers.items()):
            if layer.num_experts != constraints.num_experts:
                raise PlanningError(f"layer {index} has statistics for {layer.num_experts} experts but the model "
                                    f"has {constraints.num_experts}: statistics and model do not match")
            for need in sorted(self.needs):
                if getattr(layer, need) is None:
                    raise PlanningError(f"method {self.name!r} needs the {need} statistic, which layer {index} "
                                        f"lacks: calibrate with extras including {need!r}")


def frequency_order(layer: LayerStatistics, experts: list[int]) -> list[int]:
    """`experts` from most to least routed tokens; ties by lower expert index."""
    count = layer.count.tolist()
    return sorted(experts, key=lambda j: (-count[j], j))


def top_by_score(scores: torch.Tensor, experts: list[int], n: int) -> list[int]:
    """The `n` highest-scoring of `experts`, ties by lower expert index (deterministic)."""
    values = scores.tolist()
    return sorted(experts, key=lambda j: (-values[j], j))[:n]
