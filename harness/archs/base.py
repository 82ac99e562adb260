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

from harness.archs.layout import TensorLayout


@dataclass
class ExpertWeights:
    """Expert j as three matrices: out = down @ (act(gate @ x) * (up @ x)), plus the biases of the
    families whose experts have them (gpt-oss: out = down @ act(gate @ x + b_g, up @ x + b_u) + b_d).
    Ungated experts (Nemotron-H: out = down @ act(up @ x)) have no gate: None."""

    gate: torch.Tensor | None  # [I, H]; None for an ungated expert
    up: torch.Tensor  # [I, H]
    down: torch.Tensor  # [H, I]
    gate_bias: torch.Tensor | None = None  # [I]
    up_bias: torch.Tensor | None = None  # [I]
    down_bias: torch.Tensor | None = None  # [H]

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> ExpertWeights:
        """The inverse of `tensors`: a gate left out is None (an ungated expert)."""
        return cls(**{"gate": None, **tensors})

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors present, by field name (biases only when the family has them)."""
        return {name: value for name in ("gate", "up", "down", "gate_bias", "up_bias", "down_bias")
                if (value := getattr(self, name)) is not None}


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


class MoEArch(TensorLayout):
    """Adapter for one model family; subclasses mostly set class attributes. Its checkpoint's tensors from
    config.json alone come from `TensorLayout` (harness.archs.layout)."""

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
    # `<block>.experts.`, of the gate_up and down tensors (rows oriented as `split_fused_expert` reads
    # them). None: per-expert keys.
    hub_fused_expert_names: ClassVar[dict[str, str] | None] = None
    # Module paths of the causal-LM model, which are also the key prefixes of its checkpoint tensors.
    embedding_path: ClassVar[str] = "model.embed_tokens"
    layers_path: ClassVar[str] = "model.layers"
    # The model_type of the multimodal wrapper whose config.json nests this family's settings under
    # `text_config` (Llama-4: "llama4"); None when the family has none.
    wrapper_model_type: ClassVar[str | None] = None
    # Other config keys that also hold the routed-expert count (rewritten with it).
    expert_count_aliases: ClassVar[tuple[str, ...]] = ()
    # True for the group-limited top-k router (GLM-4.5, DeepSeek-V3), which scores every group by
    # its top-2 experts even when there is a single group: each group must keep at least two.
    grouped_router: ClassVar[bool] = False
    # Config keys that shape routing and the layer stack (besides the expert count and top-k): what a
    # rehearsal stand-in copies from the real model's config.json.
    structure_keys: ClassVar[tuple[str, ...]] = ()
    # The config keys of the layer stack: how many dense layers come before the first MoE layer, and how many
    # multi-token-prediction layers are stored after the decoder layers (None: the family has none).
    leading_dense_key: ClassVar[str | None] = None
    mtp_layers_key: ClassVar[str | None] = None
    # Checkpoint key prefixes of modules stored beside the decoder stack that the causal LM never runs (Qwen3-Next's
    # and Qwen3.5's multi-token-prediction module under `mtp.`, with its own routed experts): compressed
    # checkpoints drop them, and counts leave them out, as they do MTP layers.
    extra_module_prefixes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def leading_dense_layers(cls, config: dict[str, Any]) -> int:
        return int(config.get(cls.leading_dense_key) or 0) if cls.leading_dense_key else 0

    @classmethod
    def mtp_layers(cls, config: dict[str, Any]) -> int:
        return int(config.get(cls.mtp_layers_key) or 0) if cls.mtp_layers_key else 0

    def __init__(self, config: dict[str, Any]):
        self.config = config

    # -- config -----------------------------------------------------------------------
    @classmethod
    def text_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """The dict in a config.json that holds this family's settings: `config` itself, or the `text_config`
        of the family's multimodal wrapper (the same object, so updating it updates `config`)."""
        if cls.wrapper_model_type is not None and config.get("model_type") == cls.wrapper_model_type \
                and "text_config" in config:
            return config["text_config"]
        return config

    @staticmethod
    def unwrapped_config(config: dict[str, Any]) -> dict[str, Any]:
        """A multimodal wrapper's config.json as the config of the family it wraps (its `text_config`, with
        the family's model_type); any other config as it is. Imports the adapters only for a wrapper."""
        from harness.archs import FAMILIES, arch_class

        if config.get("model_type") in FAMILIES or "text_config" not in config:
            return config
        for family in FAMILIES.names():
            cls = arch_class(family)
            if cls.wrapper_model_type == config.get("model_type"):
                return {**cls.text_config(config), "model_type": cls.model_type}
        return config

    @property
    def num_experts(self) -> int:
        return int(self.config[self.expert_count_key])

    @property
    def top_k(self) -> int:
        return int(self.config[self.top_k_key])

    @property
    def expert_width(self) -> int:
        """The width of what the routed experts read and write (their statistics' width): the hidden size, unless
        the block projects tokens into a latent space first (Nemotron-H's `moe_latent_size`)."""
        return int(self.config["hidden_size"])

    @property
    def n_group(self) -> int:
        """Expert groups of group-limited routing (1 when the router has none)."""
        return int(self.config.get("n_group") or 1)

    @property
    def topk_group(self) -> int:
        return int(self.config.get("topk_group") or self.n_group)

    # -- modules ----------------------------------------------------------------------
    @property
    def embedding_key(self) -> str:
        """The checkpoint key of the input embeddings (a multimodal wrapper stores them under its own prefix)."""
        return f"{self.embedding_path}.weight"

    def layer_prefix(self, index: int) -> str:
        """The key prefix (and module path, dot-terminated) of decoder layer `index`."""
        return f"{self.layers_path}.{index}."

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
        return self.split_fused_expert(layer.experts.gate_up_proj[j], layer.experts.down_proj[j])

    def split_fused_expert(self, gate_up: torch.Tensor, down: torch.Tensor) -> ExpertWeights:
        """Expert j from its rows of the family's fused tensors (here gate_up [2I, H], down [H, I])."""
        inter = gate_up.shape[0] // 2
        return ExpertWeights(gate=gate_up[:inter], up=gate_up[inter:], down=down)

    def join_fused_expert(self, expert: ExpertWeights) -> tuple[torch.Tensor, torch.Tensor]:
        """The inverse of `split_fused_expert`: one expert's (gate_up, down) rows of the fused tensors."""
        return torch.cat([expert.gate, expert.up], dim=0), expert.down

    def fused_tensor_names(self, stored: set[str]) -> list[str] | None:
        """Which of a layer's fused expert tensors (names after `experts.`) one expert's rows are read from and
        written to when experts are merged; None when this family cannot merge tensors stored as `stored`."""
        names = self.hub_fused_expert_names
        return sorted(names.values()) if names is not None and stored == set(names.values()) else None

    def fused_expert(self, stored: dict[str, torch.Tensor], j: int) -> ExpertWeights:
        """Expert j, in the canonical view, from a layer's whole fused tensors (`fused_tensor_names`)."""
        names = self.hub_fused_expert_names or {}
        return self.split_fused_expert(stored[names["gate_up"]][j], stored[names["down"]][j])

    def fused_rows(self, expert: ExpertWeights, stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The inverse of `fused_expert`: one expert's row of each fused tensor, in that tensor's dtype."""
        names = self.hub_fused_expert_names or {}
        gate_up, down = self.join_fused_expert(expert)
        return {names["gate_up"]: gate_up.to(stored[names["gate_up"]].dtype),
                names["down"]: down.to(stored[names["down"]].dtype)}

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
            rows = [self.join_fused_expert(ExpertWeights.from_tensors(experts[j])) for j in sorted(experts)]
            ours = f"{self.block_attr}.experts."
            state[f"{ours}gate_up_proj"] = torch.stack([gate_up for gate_up, _ in rows])
            state[f"{ours}down_proj"] = torch.stack([down for _, down in rows])
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
