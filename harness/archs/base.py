"""The adapter interface, and the implementation shared by the fused-expert families.

In transformers 5.x, qwen3_moe, mixtral, ernie4_5_moe, glm4_moe and deepseek_v3 hold
their routed experts as fused 3-D parameters (`gate_up_proj` [E, 2I, H], `down_proj`
[E, H, I]) and call them as `experts(hidden, top_k_index, top_k_weights)` with the
routing their own router module computed. Methods and the observer only ever see the
canonical per-expert view below, never the storage layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class ExpertWeights:
    """Expert j as three matrices: out = down @ (act(gate @ x) * (up @ x))."""

    gate: torch.Tensor  # [I, H]
    up: torch.Tensor  # [I, H]
    down: torch.Tensor  # [H, I]


@dataclass
class Routing:
    """What the model's own router decided for a batch of flattened tokens."""

    index: torch.Tensor  # [T, k] selected experts
    weights: torch.Tensor  # [T, k] combine weights, exactly as the forward applies them
    logits: torch.Tensor  # [T, E] raw router logits


@dataclass
class MoELayer:
    """One MoE block of a loaded model."""

    index: int  # decoder layer index
    name: str  # module path of the block
    block: nn.Module
    router: nn.Module
    experts: nn.Module
    shared: nn.Module | None
    num_experts: int
    top_k: int


class MoEArch:
    """Adapter for one model family; subclasses mostly set class attributes."""

    model_type: ClassVar[str]
    expert_count_key: ClassVar[str]
    top_k_key: ClassVar[str] = "num_experts_per_tok"
    block_attr: ClassVar[str] = "mlp"
    router_attr: ClassVar[str] = "gate"
    shared_attr: ClassVar[str | None] = None
    # Where the correction bias lives in the hub checkpoint (relative to the block), if any.
    correction_bias_key: ClassVar[str | None] = None
    # True when the experts' combine weight scales the expert *input* (Llama-4).
    scales_input: ClassVar[bool] = False
    # Hub (on-disk) layout: the block's name there, and the per-expert projection names.
    hub_block_attr: ClassVar[str | None] = None
    hub_expert_names: ClassVar[dict[str, str]] = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
    # Hub layout when the checkpoint stores the routed experts fused (Llama-4): the names, under
    # `<block>.experts.`, of the gate_up [E, H, 2I] and down [E, I, H] tensors. None: per-expert keys.
    hub_fused_expert_names: ClassVar[dict[str, str] | None] = None
    # Other config keys that also hold the routed-expert count (rewritten with it).
    expert_count_aliases: ClassVar[tuple[str, ...]] = ()
    # True for the group-limited top-k router (GLM-4.5, DeepSeek-V3), which scores every group by
    # its top-2 experts even when there is a single group: each group must keep at least two.
    grouped_router: ClassVar[bool] = False
    # Config keys that shape routing and the layer stack (besides the expert count and top-k): what a
    # rehearsal stand-in copies from the real model's config.json.
    structure_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: dict[str, Any]):
        self.config = config

    # -- config -----------------------------------------------------------------------
    @property
    def num_experts(self) -> int:
        return int(self.config[self.expert_count_key])

    @property
    def top_k(self) -> int:
        return int(self.config[self.top_k_key])

    @property
    def n_group(self) -> int:
        """Expert groups of group-limited routing (1 when the router has none)."""
        return int(self.config.get("n_group") or 1)

    @property
    def topk_group(self) -> int:
        return int(self.config.get("topk_group") or self.n_group)

    # -- modules ----------------------------------------------------------------------
    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        inner = model.model if hasattr(model, "model") else model
        return inner.layers

    def moe_layer(self, layer_index: int, decoder_layer: nn.Module, prefix: str = "") -> MoELayer | None:
        """The MoE block of one decoder layer, or None for a dense layer."""
        block = getattr(decoder_layer, self.block_attr, None)
        if block is None or not hasattr(block, "experts"):
            return None
        shared = getattr(block, self.shared_attr) if self.shared_attr else None
        return MoELayer(
            index=layer_index,
            name=f"{prefix}layers.{layer_index}.{self.block_attr}",
            block=block,
            router=getattr(block, self.router_attr),
            experts=block.experts,
            shared=shared,
            num_experts=self.num_experts,
            top_k=self.top_k,
        )

    def moe_layers(self, model: nn.Module) -> list[MoELayer]:
        found = []
        for index, decoder_layer in enumerate(self.decoder_layers(model)):
            layer = self.moe_layer(index, decoder_layer, prefix="model.")
            if layer is not None:
                found.append(layer)
        if not found:
            raise ValueError(f"no MoE layers found in this {self.model_type} model")
        return found

    # -- canonical expert view ---------------------------------------------------------------
    def expert_weights(self, layer: MoELayer, j: int) -> ExpertWeights:
        gate_up = layer.experts.gate_up_proj[j]  # [2I, H]
        inter = gate_up.shape[0] // 2
        return ExpertWeights(gate=gate_up[:inter], up=gate_up[inter:], down=layer.experts.down_proj[j])

    def expert_forward(self, layer: MoELayer, j: int, x: torch.Tensor) -> torch.Tensor:
        """Expert j's unweighted output f_j(x) for tokens x [T, H]."""
        w = self.expert_weights(layer, j)
        act = layer.experts.act_fn
        return nn.functional.linear(act(nn.functional.linear(x, w.gate)) * nn.functional.linear(x, w.up), w.down)

    # -- routing --------------------------------------------------------------------------
    def route(self, layer: MoELayer, hidden: torch.Tensor) -> Routing:
        """Call the model's own router on flattened tokens [T, H]."""
        logits, weights, index = layer.router(hidden)
        return Routing(index=index, weights=weights, logits=logits)

    def router_logits_from_output(self, output: Any) -> torch.Tensor:
        return output[0]

    # -- instrumentation ------------------------------------------------------------------------
    def instrument(self, layer: MoELayer, record) -> Any:
        """Route the block's expert computation through `record`; returns an undo callable.

        `record(layer, hidden, index, weights, compute)` must return the combined routed
        output. It sees the true routing (the arguments the block passes to its experts).
        """
        def forward(hidden_states, top_k_index, top_k_weights):
            return record(layer, hidden_states, top_k_index, top_k_weights, scale_input=False)

        return replace_forward(layer.experts, forward)

    # -- checkpoint layout ---------------------------------------------------------------------
    def hub_to_module_state(self, tensors: dict[str, torch.Tensor], block_prefix: str) -> dict[str, torch.Tensor]:
        """Turn one decoder layer's hub tensors (per-expert keys) into its module state dict.

        `block_prefix` is the hub prefix of the decoder layer, e.g. "model.layers.3.";
        returned keys are relative to the decoder layer module.
        """
        state: dict[str, torch.Tensor] = {}
        experts: dict[int, dict[str, torch.Tensor]] = {}
        hub_block = self.hub_block_attr or self.block_attr
        marker = f"{hub_block}.experts."
        names = {hub: ours for ours, hub in self.hub_expert_names.items()}
        for key, tensor in tensors.items():
            rel = key[len(block_prefix):]
            tail = rel[len(marker):] if rel.startswith(marker) else ""
            if tail.split(".")[0].isdigit():
                j, proj = tail.split(".")[:2]
                experts.setdefault(int(j), {})[names[proj]] = tensor
            else:
                if rel.startswith(f"{hub_block}."):
                    rel = f"{self.block_attr}.{rel[len(hub_block) + 1:]}"
                state[self.module_key(rel)] = tensor
        if experts:
            ids = sorted(experts)
            ours = f"{self.block_attr}.experts."
            state[f"{ours}gate_up_proj"] = torch.stack(
                [torch.cat([experts[j]["gate"], experts[j]["up"]], dim=0) for j in ids]
            )
            state[f"{ours}down_proj"] = torch.stack([experts[j]["down"] for j in ids])
        return state

    def module_key(self, hub_key: str) -> str:
        """Rename of a non-expert hub key (relative to the decoder layer) to the module's name."""
        return hub_key


def replace_forward(module: nn.Module, forward: Any) -> Any:
    """Make `forward` the module's forward; returns the undo. A forward already set on the instance
    (accelerate's device hooks) is put back by the undo, not deleted."""
    previous = module.__dict__.get("forward")
    module.forward = forward

    def undo() -> None:
        if previous is None:
            del module.forward
        else:
            module.forward = previous

    return undo
