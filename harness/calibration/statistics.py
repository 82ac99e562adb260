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

from harness.util.atomic import atomic_write

# Bump when a statistic's definition or the file layout changes: it is part of the cache key.
STATS_FORMAT_VERSION = 2  # 2: max_act is the signed maximum; max_abs_act added

@dataclass(frozen=True)
class Statistic:
    """One statistic the observer can record, per MoE layer.

    `shape` is in experts E and hidden size H; `extra` names the optional group that records it
    (None: always recorded, from the routed tokens the forward computes anyway); the running value
    starts at `start`, and experts never routed report `unrouted` when it is set.
    """

    name: str
    shape: tuple[str, ...]
    meaning: str
    extra: str | None = None
    start: float = 0.0
    unrouted: float | None = None


# The one list of statistics (docs/architecture.md, "Decisions"). A new one is a line here plus its accumulation
# code in harness.calibration.observer; a method asks for an optional group through `Method.needs`.
STATISTICS: tuple[Statistic, ...] = (
    Statistic("count", ("E",), "routed real tokens that selected expert j"),
    Statistic("gate_sum", ("E",), "sum of the combine weights g_j(x) over routed x"),
    Statistic("ean_sum", ("E",), "sum of ||f_j(x)|| over routed x"),
    Statistic("reap_sum", ("E",), "sum of g_j(x) * ||f_j(x)|| over routed x"),
    Statistic("max_act", ("E",), "the largest entry of f_j(x) over routed x, signed (the paper code's)",
              start=float("-inf"), unrouted=0.0),
    Statistic("max_abs_act", ("E",), "the largest |entry| of f_j(x) over routed x"),
    Statistic("tokens", (), "real (non-padding) tokens the layer saw"),
    Statistic("mean_out_sum", ("E", "H"), "sum over all real x of f_j(x) (every expert on every token)",
              extra="mean_out"),
    Statistic("gated_out_sum", ("E", "H"), "sum over routed real x of g_j(x) * f_j(x) (REAM)", extra="gated_out"),
    Statistic("router_gram", ("E", "E"), "sum over real x of logits^T logits", extra="router_similarity"),
    Statistic("router_logit_sum", ("E",), "sum over real x of the router logits", extra="router_similarity"),
)
# The optional groups: what methods may need beyond the routed statistics.
EXTRAS: tuple[str, ...] = tuple(sorted({s.extra for s in STATISTICS if s.extra}))
ROUTED_STATS = tuple(s.name for s in STATISTICS if s.extra is None and s.shape)


def recorded(extras: frozenset[str] | set[str] | tuple = ()) -> list[Statistic]:
    """The statistics a calibration with these optional groups records."""
    unknown = set(extras) - set(EXTRAS)
    if unknown:
        raise ValueError(f"unknown optional statistics {sorted(unknown)}; known: {', '.join(EXTRAS)}")
    return [s for s in STATISTICS if s.extra is None or s.extra in extras]


def shape_of(stat: Statistic, num_experts: int, hidden_size: int) -> tuple[int, ...]:
    return tuple({"E": num_experts, "H": hidden_size}[d] for d in stat.shape)


class LayerStatistics:
    """Statistics of one MoE layer with E experts: one float64 tensor attribute per declared statistic
    (`tokens` an int); the optional ones not recorded are None."""

    def __init__(self, num_experts: int, hidden_size: int, extras: frozenset[str] | set[str] | tuple = ()):
        self.num_experts, self.hidden_size = num_experts, hidden_size
        self.tokens = 0
        wanted = {s.name for s in recorded(extras)}
        for stat in STATISTICS:
            if stat.shape:
                value = torch.zeros(shape_of(stat, num_experts, hidden_size), dtype=torch.float64)
                setattr(self, stat.name, value if stat.name in wanted else None)

    # -- derived --------------------------------------------------------------------------
    @property
    def reap(self) -> torch.Tensor:
        """REAP score: mean gated output norm over routed tokens (0 for unused experts)."""
        return torch.where(self.count > 0, self.reap_sum / self.count.clamp(min=1), 0.0)

    @property
    def mean_out(self) -> torch.Tensor | None:
        return None if self.mean_out_sum is None else self.mean_out_sum / max(self.tokens, 1)

    @property
    def gated_out(self) -> torch.Tensor | None:
        """REAM's gated output: mean over all real tokens of g_j(x) f_j(x) (g_j = 0 where j was not chosen)."""
        return None if self.gated_out_sum is None else self.gated_out_sum / max(self.tokens, 1)

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
        out = {}
        for stat in STATISTICS:
            tokens = stat.name == "tokens"
            value = torch.tensor([self.tokens], dtype=torch.float64) if tokens else getattr(self, stat.name)
            if value is not None:
                out[stat.name] = value
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> LayerStatistics:
        mean_out = tensors.get("mean_out_sum")
        stats = cls(num_experts=tensors["count"].numel(), hidden_size=0 if mean_out is None else mean_out.shape[1])
        for stat in STATISTICS:
            if stat.name == "tokens":
                stats.tokens = int(tensors["tokens"].item())
            elif stat.extra is None:
                setattr(stats, stat.name, tensors[stat.name])
            else:
                setattr(stats, stat.name, tensors.get(stat.name))
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
