"""What each tensor of a family's checkpoint is to the writer: routed expert, fused experts, router, bias."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from harness.archs.base import MoEArch
from harness.checkpoint.errors import CheckpointError


@dataclass(frozen=True)
class Role:
    """What a hub tensor is to the writer."""

    kind: str  # other | expert | fused | router | bias | extra_layer
    layer: int = -1
    expert: int = -1
    name: str = ""  # expert: the key after `experts.{j}.`; fused/router: after `experts.` / the router prefix


@dataclass
class LayerTensors:
    """The routed-expert tensors of one MoE layer, by role."""

    experts: dict[int, dict[str, str]] = field(default_factory=dict)  # j -> name -> key
    fused: dict[str, str] = field(default_factory=dict)  # name -> key
    router: dict[str, str] = field(default_factory=dict)  # name -> key
    bias: str | None = None


class TensorRoles:
    """Classifies the hub keys of one family's checkpoint (routed experts, routers, correction biases)."""

    def __init__(self, arch: MoEArch, keys: Iterable[str]):
        self.arch = arch
        self.block = arch.hub_block_attr or arch.block_attr
        self.router_prefix = f"{self.block}.{arch.router_attr}."
        marker = re.compile(rf"^(.*?)layers\.\d+\.{re.escape(self.block)}\.experts\.")
        keys = [k for k in keys if not self._extra(k)]
        prefixes = sorted({m.group(1) for key in keys if (m := marker.match(key))})
        if not prefixes:
            raise CheckpointError(f"no routed-expert tensors found: a {arch.model_type} checkpoint should have keys "
                                  f"like '{arch.layers_path}.N.{self.block}.experts...'")
        if len(prefixes) > 1:
            raise CheckpointError(f"routed experts under several prefixes {prefixes}; expected one decoder stack")
        self.prefix = prefixes[0]
        self._layer = re.compile(rf"^{re.escape(self.prefix)}layers\.(\d+)\.(.+)$")
        self.num_layers = int(arch.config["num_hidden_layers"])

    def _extra(self, key: str) -> bool:
        return bool(self.arch.extra_module_prefixes) and key.startswith(self.arch.extra_module_prefixes)

    def role(self, key: str) -> Role:
        if self._extra(key):  # a module outside the model's forward (Qwen3-Next's `mtp.`)
            return Role("extra_layer")
        match = self._layer.match(key)
        if not match:
            return Role("other")
        layer, rel = int(match.group(1)), match.group(2)
        if layer >= self.num_layers:  # e.g. multi-token-prediction layers, outside the model's forward
            return Role("extra_layer", layer)
        experts = f"{self.block}.experts."
        if rel.startswith(experts):
            tail = rel[len(experts):]
            head, _, name = tail.partition(".")
            if head.isdigit():
                return Role("expert", layer, int(head), name)
            return Role("fused", layer, name=tail)
        if rel == self.arch.correction_bias_key:
            return Role("bias", layer)
        if rel.startswith(self.router_prefix):
            return Role("router", layer, name=rel[len(self.router_prefix):])
        return Role("other", layer)

    def key(self, layer: int, rel: str) -> str:
        return f"{self.prefix}layers.{layer}.{rel}"

    def expert_key(self, layer: int, expert: int, name: str) -> str:
        return self.key(layer, f"{self.block}.experts.{expert}.{name}")

    def inventory(self, keys: Iterable[str]) -> dict[int, LayerTensors]:
        """The MoE layers' routed-expert tensors, by layer."""
        layers: dict[int, LayerTensors] = {}
        for key in keys:
            role = self.role(key)
            if role.kind in ("other", "extra_layer"):
                continue
            entry = layers.setdefault(role.layer, LayerTensors())
            if role.kind == "expert":
                entry.experts.setdefault(role.expert, {})[role.name] = key
            elif role.kind == "fused":
                entry.fused[role.name] = key
            elif role.kind == "router":
                entry.router[role.name] = key
            else:
                entry.bias = key
        return {i: t for i, t in sorted(layers.items()) if t.experts or t.fused}
