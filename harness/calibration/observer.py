"""Record the routing each MoE layer really computes, and the expert statistics.

The observer takes over the expert computation of every MoE block (the call that
receives the router's own `top_k_index` / `top_k_weights`), computes each selected
expert once on its routed tokens, adds the gated result into the block output exactly
as transformers does, and accumulates the statistics from those same outputs. So the
routing is the model's (sigmoid, correction bias, groups, renormalisation, scaling),
and routed-token statistics (REAM's gated outputs among them) cost no extra expert compute. Only `mean_out` (HC-SMoE)
runs every expert on every token, and only when asked.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.archs.base import MoEArch, MoELayer
from harness.calibration.statistics import STATISTICS, LayerStatistics, recorded, shape_of

# "model": the routing the model computes (the default); "reap_repo": what the paper's public code records.
ROUTING_MODES = ("model", "reap_repo")


class _Accumulator:
    """One layer's running sums (harness.calibration.statistics.STATISTICS), on the device the layer runs on,
    so recording never waits for the GPU. Float64 sums make the result independent of batching; they move
    to the host once, at the end."""

    def __init__(self, num_experts: int, hidden: int, device: torch.device, extras: frozenset[str]):
        self.num_experts, self.hidden = num_experts, hidden
        self.stats = recorded(extras)
        for stat in STATISTICS:
            value = None
            if stat in self.stats:
                value = torch.full(shape_of(stat, num_experts, hidden), stat.start, dtype=torch.float64, device=device)
            setattr(self, stat.name, value)

    def add_routed(self, expert: torch.Tensor, gate: torch.Tensor, norm: torch.Tensor, real: torch.Tensor) -> None:
        """One entry per routed (token, expert) pair; `real` is 1 for real tokens, 0 for padding."""
        self.count.index_add_(0, expert, real)
        self.gate_sum.index_add_(0, expert, gate * real)
        self.ean_sum.index_add_(0, expert, norm * real)
        self.reap_sum.index_add_(0, expert, gate * norm * real)

    def to_statistics(self) -> LayerStatistics:
        stats = LayerStatistics(num_experts=self.num_experts, hidden_size=self.hidden,
                                extras={s.extra for s in self.stats if s.extra})
        for stat in self.stats:
            value = getattr(self, stat.name)
            if stat.unrouted is not None:
                value = torch.where(self.count > 0, value, stat.unrouted)
            if stat.name == "tokens":
                stats.tokens = int(value.item())
            else:
                setattr(stats, stat.name, value.cpu())
        return stats


class Observer:
    """Context manager: `with Observer(model, arch) as obs: obs.set_mask(mask); model(...)`."""

    def __init__(self, model: nn.Module | None, arch: MoEArch, *, extras: frozenset[str] | set[str] | tuple = (),
                 layers: list[MoELayer] | None = None, hidden_size: int | None = None, routing: str = "model"):
        if routing not in ROUTING_MODES:
            raise ValueError(f"routing must be one of {', '.join(ROUTING_MODES)}, got {routing!r}")
        self.arch = arch
        self.routing = routing
        # reap_repo: the paper code renormalises the top-k softmax weights when the config asks for it.
        self.renormalise = bool(arch.config.get("norm_topk_prob", False))
        self._logits: dict[int, torch.Tensor] = {}
        self.layers = layers if layers is not None else arch.moe_layers(model)
        self.extras = frozenset(extras)
        recorded(self.extras)  # unknown names fail here, before any forward
        self.router_similarity = "router_similarity" in self.extras
        self.hidden = hidden_size or arch.expert_width
        self._sums: dict[int, _Accumulator] = {}
        self._mask: torch.Tensor | None = None
        self._undo: list[Any] = []

    @property
    def stats(self) -> dict[int, LayerStatistics]:
        """Per MoE layer, the statistics so far (layers that saw no token are all zero)."""
        out = {}
        for layer in self.layers:
            sums = self._sums.get(layer.index) or _Accumulator(layer.num_experts, self.hidden, torch.device("cpu"),
                                                               self.extras)
            out[layer.index] = sums.to_statistics()
        return out

    def _accumulator(self, layer: MoELayer, device: torch.device) -> _Accumulator:
        sums = self._sums.get(layer.index)
        if sums is None:
            sums = self._sums[layer.index] = _Accumulator(layer.num_experts, self.hidden, device, self.extras)
        return sums

    def set_mask(self, attention_mask: torch.Tensor | None) -> None:
        """Mark the real tokens of the next forward ([B, S] attention mask; None = all)."""
        self._mask = None if attention_mask is None else attention_mask.reshape(-1).bool()

    # -- hooks -----------------------------------------------------------------------------
    def attach(self, layers: list[MoELayer] | None = None) -> None:
        for layer in layers if layers is not None else self.layers:
            self._undo.append(self.arch.instrument(layer, self._record))
            if self.router_similarity or self.routing == "reap_repo":
                handle = layer.router.register_forward_hook(self._router_hook(layer))
                self._undo.append(handle.remove)

    def detach(self) -> None:
        while self._undo:
            self._undo.pop()()

    def __enter__(self) -> Observer:
        self.attach()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def _real(self, n_tokens: int, device: torch.device) -> torch.Tensor:
        if self._mask is None:
            return torch.ones(n_tokens, dtype=torch.bool, device=device)
        if self._mask.numel() != n_tokens:
            raise RuntimeError(f"attention mask covers {self._mask.numel()} tokens, the layer saw {n_tokens}")
        return self._mask.to(device, non_blocking=True)

    def _router_hook(self, layer: MoELayer):
        def hook(module, args, output):
            logits = self.arch.router_logits_from_output(output).reshape(-1, layer.num_experts)
            if self.routing == "reap_repo":
                self._logits[layer.index] = logits.detach()
            if not self.router_similarity:
                return
            sums = self._accumulator(layer, logits.device)
            real = self._real(logits.shape[0], logits.device)
            masked = logits.double() * real[:, None]
            sums.router_gram += masked.T @ masked
            sums.router_logit_sum += masked.sum(0)
        return hook

    def _reap_repo_routing(self, layer: MoELayer, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What the paper's code records: top-k of the raw router logits, weights from a softmax over all
        logits (renormalised over the selected experts when the config has norm_topk_prob); no correction
        bias, no groups, no sigmoid, whatever the family."""
        logits = self._logits.pop(layer.index, None)
        if logits is None or logits.shape[0] != n_tokens:
            raise RuntimeError(f"layer {layer.index}: no router logits for the {n_tokens} tokens of this call")
        index = logits.topk(layer.top_k, dim=-1).indices
        weights = torch.softmax(logits.float(), dim=-1).gather(1, index)
        if self.renormalise:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return index, weights

    def _record(self, layer: MoELayer, hidden: torch.Tensor, index: torch.Tensor,
                weights: torch.Tensor, scale_input: bool) -> torch.Tensor:
        sums = self._accumulator(layer, hidden.device)
        real = self._real(hidden.shape[0], hidden.device)
        sums.tokens += real.double().sum()
        out = torch.zeros_like(hidden)
        outputs: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for j in torch.unique(index).tolist():
            if j >= layer.num_experts:  # transformers' "dropped token" sentinel
                continue
            token, slot = torch.where(index == j)
            x = hidden[token]
            g = weights[token, slot]
            if scale_input:  # Llama-4: the weight scales the expert input
                contribution = self.arch.expert_forward(layer, j, x * g[:, None].to(x.dtype))
                f = self.arch.expert_forward(layer, j, x)
            else:
                f = self.arch.expert_forward(layer, j, x)
                contribution = f * g[:, None]
            out.index_add_(0, token, contribution.to(out.dtype))
            outputs[j] = (token, slot, f.detach())
        if self.routing == "model":
            self._accumulate(sums, real, weights, outputs)
        else:  # the statistics follow the paper code's routing; the forward stays the model's own
            stat_index, stat_weights = self._reap_repo_routing(layer, hidden.shape[0])
            recorded = {}
            for j in torch.unique(stat_index).tolist():
                token, slot = torch.where(stat_index == j)
                recorded[j] = (token, slot, self.arch.expert_forward(layer, j, hidden[token]).detach())
            self._accumulate(sums, real, stat_weights, recorded)
        if sums.mean_out_sum is not None:
            x_all = hidden[real]
            for j in range(layer.num_experts):
                sums.mean_out_sum[j] += self.arch.expert_forward(layer, j, x_all).sum(0, dtype=torch.float64)
        return out

    @staticmethod
    def _accumulate(sums: _Accumulator, real: torch.Tensor, weights: torch.Tensor,
                    outputs: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """Routed statistics from expert j's outputs f on its (token, slot) pairs; padding counts as nothing."""
        if not outputs:
            return
        padded = not bool(real.all())  # packed rows have no padding: then no masking at all
        for j, (token, _, f) in outputs.items():
            kept = f[real[token]] if padded else f
            if kept.numel():
                low, high = torch.aminmax(kept)  # one pass for both maxima
                sums.max_act[j] = torch.maximum(sums.max_act[j], high.double())
                sums.max_abs_act[j] = torch.maximum(sums.max_abs_act[j], torch.maximum(high, -low).double())
        token = torch.cat([t for t, _, _ in outputs.values()])
        slot = torch.cat([s for _, s, _ in outputs.values()])
        experts = torch.cat([torch.full_like(t, j) for j, (t, _, _) in outputs.items()])
        # Norms in at least float32 (bf16 outputs are widened), summed in float64.
        norms = torch.cat([torch.linalg.vector_norm(f, dim=-1, dtype=torch.promote_types(f.dtype, torch.float32))
                           for _, _, f in outputs.values()]).double()
        sums.add_routed(experts, weights[token, slot].detach().double(), norms, real[token].double())
        if sums.gated_out_sum is not None:  # REAM: each expert's gated output g_j(x) f_j(x), summed over routed x
            for j, (token, slot, f) in outputs.items():
                gate = weights[token, slot].detach().double() * real[token].double()
                sums.gated_out_sum[j] += gate @ f.double()
