"""Which expert counts a compressed layer may keep, and the ratio -> count rule.

Every layer keeps the same count (vLLM needs one `num_experts`). Routers with expert
groups (DeepSeek-V3 / Kimi-K2 / GLM `n_group` > 1) keep the same count in every group,
group g being experts [g*E/n_group, (g+1)*E/n_group), so the count is divisible by
`n_group`. The router must still be able to pick `top_k` experts: kept >= top_k, and with
groups `topk_group * per_group >= top_k`. Group-limited routers also score each group by
the sum of its two best experts (`topk(2)` in transformers and vLLM), so they need at
least two experts per group (`min_per_group`). A ratio whose count breaks any of these
fails here, before any work, with the feasible counts in the message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.archs.base import MoEArch


class InfeasibleRatioError(ValueError):
    """The requested ratio gives an expert count these routers cannot use."""


@dataclass(frozen=True)
class ExpertConstraints:
    """Routing facts of one model that limit how many experts a layer may keep."""

    num_experts: int
    top_k: int
    n_group: int = 1
    topk_group: int | None = None  # None: all groups may be selected (= n_group)
    min_per_group: int = 1  # 2 for group-limited routers (they score groups by their top-2 experts)

    def __post_init__(self) -> None:
        if self.num_experts < 1 or not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"need 1 <= top_k <= num_experts, got top_k={self.top_k}, "
                             f"num_experts={self.num_experts}")
        if self.n_group < 1 or self.num_experts % self.n_group:
            raise ValueError(f"n_group={self.n_group} must be >= 1 and divide num_experts={self.num_experts}")
        if self.topk_group is not None and not 1 <= self.topk_group <= self.n_group:
            raise ValueError(f"topk_group={self.topk_group} must lie in 1..n_group={self.n_group}")
        if self.min_per_group < 1:
            raise ValueError(f"min_per_group must be >= 1, got {self.min_per_group}")

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_arch(cls, arch: MoEArch) -> ExpertConstraints:
        return cls.for_family(arch.model_type, num_experts=arch.num_experts, top_k=arch.top_k,
                              n_group=arch.n_group, topk_group=arch.topk_group)

    @classmethod
    def for_family(cls, family: str, *, num_experts: int, top_k: int, n_group: int = 1,
                   topk_group: int | None = None) -> ExpertConstraints:
        """The constraints of a declared layout (a hub model not downloaded yet) or of a loaded config.

        The family's router decides the smallest group (see MoEArch.grouped_router).
        """
        from harness.archs import arch_class

        min_per_group = 2 if arch_class(family).grouped_router else 1
        return cls(num_experts=num_experts, top_k=top_k, n_group=n_group, topk_group=topk_group,
                   min_per_group=min_per_group)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ExpertConstraints:
        from harness.archs import get_arch

        return cls.from_arch(get_arch(config))

    # -- groups -----------------------------------------------------------------------
    @property
    def group_size(self) -> int:
        return self.num_experts // self.n_group

    @property
    def selectable_groups(self) -> int:
        return self.n_group if self.topk_group is None else self.topk_group

    def groups(self) -> list[range]:
        """Original expert indices of each router group (one range when ungrouped)."""
        size = self.group_size
        return [range(g * size, (g + 1) * size) for g in range(self.n_group)]

    # -- counts -----------------------------------------------------------------------
    def why_infeasible(self, kept: int) -> str | None:
        """Why `kept` experts per layer cannot work, or None when it can."""
        if not 1 <= kept <= self.num_experts:
            return f"must keep between 1 and {self.num_experts} experts"
        if kept < self.top_k:
            return f"the router selects top_k={self.top_k} experts per token"
        if kept % self.n_group:
            return f"the router has n_group={self.n_group} expert groups; the count must be divisible by it"
        per_group = kept // self.n_group
        if per_group < self.min_per_group:
            return f"group-limited routing scores each group by its top {self.min_per_group} experts"
        if self.selectable_groups * per_group < self.top_k:
            return (f"topk_group={self.selectable_groups} groups of {per_group} experts cannot supply "
                    f"top_k={self.top_k} experts")
        return None

    def feasible_counts(self) -> list[int]:
        """Every kept count the routers can use, ascending (includes num_experts: ratio 0)."""
        return [k for k in range(1, self.num_experts + 1) if self.why_infeasible(k) is None]

    def ratio_of(self, kept: int) -> float:
        return 1.0 - kept / self.num_experts

    def target_count(self, ratio: float) -> int:
        """Experts kept per layer at `ratio` (fraction removed): round(E * (1 - ratio)), halves up.

        Raises InfeasibleRatioError, listing the feasible counts and their ratios, when
        the routers cannot use that count.
        """
        if not (isinstance(ratio, int | float) and 0.0 <= ratio < 1.0):  # NaN fails the comparison too
            raise InfeasibleRatioError(f"ratio must be a fraction of experts removed in [0, 1), got {ratio!r}")
        # Round half up, with a little slack so that 0.3 * 10 does not become 2.9999... -> 2.
        kept = math.floor(self.num_experts * (1.0 - ratio) + 0.5 + 1e-9)
        if ratio > 0 and kept == self.num_experts:
            smallest = min((k for k in self.feasible_counts() if k < self.num_experts), default=None)
            hint = (f"the smallest compression is {self.ratio_of(smallest):.4g} ({smallest} kept)" if smallest
                    else "no smaller count is feasible")
            raise InfeasibleRatioError(
                f"ratio {ratio:g} keeps round({self.num_experts} * (1 - {ratio:g})) = {kept} of {self.num_experts} "
                f"experts per layer: it removes none, so the 'compressed' model would be the original; {hint}.")
        reason = self.why_infeasible(kept)
        if reason is not None:
            options = ", ".join(f"{k} (ratio {self.ratio_of(k):.4g})" for k in self.feasible_counts())
            raise InfeasibleRatioError(
                f"ratio {ratio:g} keeps round({self.num_experts} * (1 - {ratio:g})) = {kept} of "
                f"{self.num_experts} experts per layer, which is infeasible: {reason}. "
                f"Feasible kept counts: {options}."
            )
        return kept

    def per_group(self, kept: int) -> int:
        """Experts kept in each router group."""
        return kept // self.n_group
