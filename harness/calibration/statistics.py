"""Per-layer expert statistics: the one output of calibration every method reads.

Saved as one safetensors file (keys `layers.<i>.<stat>`) plus a JSON manifest. All
sums are float64 so results do not depend on how tokens were batched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.atomic import atomic_write

# Bump when a statistic's definition or the file layout changes: it is part of the cache key.
STATS_FORMAT_VERSION = 2  # 2: max_act is the signed maximum; max_abs_act added

ROUTED_STATS = ("count", "gate_sum", "ean_sum", "reap_sum", "max_act", "max_abs_act")


@dataclass
class LayerStatistics:
    """Statistics of one MoE layer with E experts (see DESIGN.md, "Statistics")."""

    num_experts: int
    hidden_size: int
    count: torch.Tensor = field(init=False)  # [E] tokens that selected expert j
    gate_sum: torch.Tensor = field(init=False)  # [E] sum of combine weights g_j(x)
    ean_sum: torch.Tensor = field(init=False)  # [E] sum of ||f_j(x)||
    reap_sum: torch.Tensor = field(init=False)  # [E] sum of g_j(x) * ||f_j(x)||
    # [E] the largest entry of f_j(x) over routed x, signed, as the paper's code records it (0 if never routed)
    max_act: torch.Tensor = field(init=False)
    max_abs_act: torch.Tensor = field(init=False)  # [E] the largest |entry| of f_j(x) over routed x
    tokens: int = 0  # real (non-padding) tokens seen by the layer
    mean_out_sum: torch.Tensor | None = None  # [E, H] sum over all x of f_j(x)
    router_gram: torch.Tensor | None = None  # [E, E] sum over x of logits^T logits
    router_logit_sum: torch.Tensor | None = None  # [E]

    def __post_init__(self) -> None:
        zeros = lambda: torch.zeros(self.num_experts, dtype=torch.float64)  # noqa: E731
        self.count, self.gate_sum, self.ean_sum, self.reap_sum = zeros(), zeros(), zeros(), zeros()
        self.max_act, self.max_abs_act = zeros(), zeros()

    def enable(self, mean_out: bool, router_similarity: bool) -> None:
        if mean_out:
            self.mean_out_sum = torch.zeros(self.num_experts, self.hidden_size, dtype=torch.float64)
        if router_similarity:
            self.router_gram = torch.zeros(self.num_experts, self.num_experts, dtype=torch.float64)
            self.router_logit_sum = torch.zeros(self.num_experts, dtype=torch.float64)

    # -- derived --------------------------------------------------------------------------
    @property
    def reap(self) -> torch.Tensor:
        """REAP score: mean gated output norm over routed tokens (0 for unused experts)."""
        return torch.where(self.count > 0, self.reap_sum / self.count.clamp(min=1), 0.0)

    @property
    def mean_out(self) -> torch.Tensor | None:
        return None if self.mean_out_sum is None else self.mean_out_sum / max(self.tokens, 1)

    @property
    def router_similarity(self) -> torch.Tensor | None:
        """Cosine similarity between experts' router-logit columns over calibration tokens."""
        if self.router_gram is None:
            return None
        norms = self.router_gram.diagonal().clamp(min=1e-300).sqrt()
        return self.router_gram / norms[:, None] / norms[None, :]

    @property
    def router_similarity_second_order(self) -> torch.Tensor | None:
        """Cosine similarity between the experts' rows of the router-logit cosine-distance matrix.

        D = 1 - router_similarity (first order, over all calibration tokens at once);
        entry [i, j] is cos(D[i, :], D[j, :]): two experts are alike when they are equally far
        from every other expert. This is the M-SMoE similarity of the paper's repository,
        which however averages a per-batch D over batches, so its value depends on the
        batching; this one is computed from the float64 Gram matrix and does not. A zero row
        (an expert parallel to every other) has similarity 0 to all.
        """
        first = self.router_similarity
        if first is None:
            return None
        distance = 1.0 - first
        norms = distance.norm(dim=1).clamp(min=1e-300)
        return (distance @ distance.T) / norms[:, None] / norms[None, :]

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {name: getattr(self, name) for name in ROUTED_STATS}
        out["tokens"] = torch.tensor([self.tokens], dtype=torch.float64)
        for name in ("mean_out_sum", "router_gram", "router_logit_sum"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> LayerStatistics:
        mean_out = tensors.get("mean_out_sum")
        stats = cls(num_experts=tensors["count"].numel(),
                    hidden_size=0 if mean_out is None else mean_out.shape[1])
        for name in ROUTED_STATS:
            setattr(stats, name, tensors[name])
        stats.tokens = int(tensors["tokens"].item())
        for name in ("mean_out_sum", "router_gram", "router_logit_sum"):
            setattr(stats, name, tensors.get(name))
        return stats


@dataclass
class CalibrationStatistics:
    """All MoE layers of one model on one calibration set, with the manifest describing it."""

    layers: dict[int, LayerStatistics]
    manifest: dict[str, Any] = field(default_factory=dict)

    def save(self, out_dir: str | Path) -> Path:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        flat = {f"layers.{i}.{name}": t.contiguous() for i, s in self.layers.items()
                for name, t in s.tensors().items()}
        atomic_write(out / "statistics.safetensors", lambda p: save_file(flat, str(p)))
        atomic_write(out / "manifest.json",
                lambda p: Path(p).write_text(json.dumps(self.manifest, indent=2, sort_keys=True) + "\n"))
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> CalibrationStatistics:
        from safetensors.torch import load_file

        out = Path(out_dir)
        flat = load_file(str(out / "statistics.safetensors"))
        grouped: dict[int, dict[str, torch.Tensor]] = {}
        for key, tensor in flat.items():
            _, index, name = key.split(".", 2)
            grouped.setdefault(int(index), {})[name] = tensor
        manifest = json.loads((out / "manifest.json").read_text())
        found = manifest.get("stats_format", STATS_FORMAT_VERSION)
        if found != STATS_FORMAT_VERSION:
            raise ValueError(f"{out}: statistics format {found}, but this harness reads format {STATS_FORMAT_VERSION} "
                             "(what a statistic means changed): calibrate again")
        return cls({i: LayerStatistics.from_tensors(t) for i, t in sorted(grouped.items())}, manifest)
