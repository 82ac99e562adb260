"""Record the routing each MoE layer really computes, and the expert statistics.

The observer takes over the expert computation of every MoE block (the call that
receives the router's own `top_k_index` / `top_k_weights`), computes each selected
expert once on its routed tokens, adds the gated result into the block output exactly
as transformers does, and accumulates the statistics from those same outputs. So the
routing is the model's (sigmoid, correction bias, groups, renormalisation, scaling),
and routed-token statistics cost no extra expert compute. Only `mean_out` (HC-SMoE)
runs every expert on every token, and only when asked.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.archs.base import MoEArch, MoELayer
from harness.calibration.statistics import LayerStatistics


class Observer:
    """Context manager: `with Observer(model, arch) as obs: obs.set_mask(mask); model(...)`."""

    def __init__(self, model: nn.Module | None, arch: MoEArch, *, mean_out: bool = False,
                 router_similarity: bool = False, layers: list[MoELayer] | None = None,
                 hidden_size: int | None = None):
        self.arch = arch
        self.layers = layers if layers is not None else arch.moe_layers(model)
        self.mean_out = mean_out
        self.router_similarity = router_similarity
        hidden = hidden_size or int(arch.config["hidden_size"])
        self.stats: dict[int, LayerStatistics] = {}
        for layer in self.layers:
            self._new_stats(layer, hidden)
        self._mask: torch.Tensor | None = None
        self._undo: list[Any] = []

    def _new_stats(self, layer: MoELayer, hidden: int) -> None:
        stats = LayerStatistics(num_experts=layer.num_experts, hidden_size=hidden)
        stats.enable(self.mean_out, self.router_similarity)
        self.stats[layer.index] = stats

    def set_mask(self, attention_mask: torch.Tensor | None) -> None:
        """Mark the real tokens of the next forward ([B, S] attention mask; None = all)."""
        self._mask = None if attention_mask is None else attention_mask.reshape(-1).bool()

    # -- hooks -----------------------------------------------------------------------------
    def attach(self, layers: list[MoELayer] | None = None) -> None:
        for layer in layers if layers is not None else self.layers:
            self._undo.append(self.arch.instrument(layer, self._record))
            if self.router_similarity:
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
        return self._mask.to(device)

    def _router_hook(self, layer: MoELayer):
        def hook(module, args, output):
            logits = self.arch.router_logits_from_output(output).reshape(-1, layer.num_experts)
            real = logits[self._real(logits.shape[0], logits.device)].double()
            stats = self.stats[layer.index]
            stats.router_gram += (real.T @ real).cpu()
            stats.router_logit_sum += real.sum(0).cpu()
        return hook

    def _record(self, layer: MoELayer, hidden: torch.Tensor, index: torch.Tensor,
                weights: torch.Tensor, scale_input: bool) -> torch.Tensor:
        stats = self.stats[layer.index]
        real = self._real(hidden.shape[0], hidden.device)
        stats.tokens += int(real.sum())
        out = torch.zeros_like(hidden)
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
            keep = real[token]
            if keep.any():
                self._accumulate(stats, j, f[keep], g[keep])
        if stats.mean_out_sum is not None:
            x_all = hidden[real]
            for j in range(layer.num_experts):
                stats.mean_out_sum[j] += self.arch.expert_forward(layer, j, x_all).double().sum(0).cpu()
        return out

    @staticmethod
    def _accumulate(stats: LayerStatistics, j: int, f: torch.Tensor, g: torch.Tensor) -> None:
        f64 = f.detach().double()
        g64 = g.detach().double()
        norms = f64.norm(dim=-1)
        stats.count[j] += f64.shape[0]
        stats.gate_sum[j] += g64.sum().item()
        stats.ean_sum[j] += norms.sum().item()
        stats.reap_sum[j] += (g64 * norms).sum().item()
        stats.max_act[j] = max(stats.max_act[j].item(), f64.abs().max().item())
