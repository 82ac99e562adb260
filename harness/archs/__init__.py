"""Model-family adapters: where the MoE layers, routers and experts of each family live.

Each module of this package that defines an adapter class (`model_type = "..."`) is a family;
an installed package adds one through the `harness.archs` entry-point group. Listing or
validating families never imports torch (harness.util.registry).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from harness.util.registry import Registry

if TYPE_CHECKING:
    from harness.archs.base import MoEArch


class UnsupportedModelError(ValueError):
    """The checkpoint's model_type has no adapter."""


FAMILIES = Registry("MoE family (model_type)", "harness.archs", "model_type", "harness.archs.base:MoEArch",
                    "harness.archs", UnsupportedModelError)


def supported_families() -> list[str]:
    return FAMILIES.names()


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
    return arch_class(config.get("model_type"))(config)


def arch_class(model_type: str) -> type[MoEArch]:
    """The adapter class of a family (imports its module)."""
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not a supported MoE family; supported: {', '.join(supported_families())}")
    return FAMILIES.resolve(model_type)
