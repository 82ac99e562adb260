"""Model-family adapters: where the MoE layers, routers and experts of each family live.

The registry maps a transformers `model_type` to "module:Class", resolved on first
use, so listing or validating families never imports torch.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.archs.base import MoEArch

REGISTRY: dict[str, str] = {
    "qwen3_moe": "harness.archs.qwen3_moe:Qwen3MoeArch",
    "mixtral": "harness.archs.mixtral:MixtralArch",
    "ernie4_5_moe": "harness.archs.ernie4_5_moe:Ernie45MoeArch",
    "glm4_moe": "harness.archs.glm4_moe:Glm4MoeArch",
    "deepseek_v3": "harness.archs.deepseek_v3:DeepseekV3Arch",
    "llama4_text": "harness.archs.llama4_text:Llama4TextArch",
}


class UnsupportedModelError(ValueError):
    """The checkpoint's model_type has no adapter."""


def supported_families() -> list[str]:
    return sorted(REGISTRY)


def read_config(model_dir: str | Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a model directory needs its config.json")
    return json.loads(path.read_text())


def get_arch(config: dict | str | Path) -> MoEArch:
    """The adapter for a config dict, or for the model directory holding config.json."""
    if not isinstance(config, dict):
        config = read_config(config)
    from harness.archs.base import MoEArch

    config = MoEArch.unwrapped_config(config)  # a multimodal wrapper: the family it wraps
    model_type = config.get("model_type")
    if model_type not in REGISTRY:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not a supported MoE family; "
            f"supported: {', '.join(supported_families())}"
        )
    return arch_class(model_type)(config)


def arch_class(model_type: str) -> type[MoEArch]:
    """The adapter class of a family (imports its module)."""
    if model_type not in REGISTRY:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not a supported MoE family; supported: {', '.join(supported_families())}")
    module_name, class_name = REGISTRY[model_type].split(":")
    return getattr(importlib.import_module(module_name), class_name)
