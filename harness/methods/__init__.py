"""Compression-method registry: method name -> "module:Class", imported on first use.

One module per method. A module registers its class here by name; an installed package
can add methods through the `harness.methods` entry-point group (name = method name,
value = "module:Class"), so listing methods or validating a sweep never imports torch.

    from harness.methods import get_method
    from harness.methods.constraints import ExpertConstraints
    plan = get_method("reap", {"protect_super_experts": True}).plan(
        stats, 0.5, ExpertConstraints.from_config(config))

Conventions every method follows: the same kept count in every layer (and in every router
group), except M-SMoE's global dominance, whose merged layers keep different numbers of
groups (all router slots stay); ties go to the lower expert index; never-routed experts
score 0 (REAP, EAN mean) and get weight 0 in a frequency-weighted merge (a cluster of
several never-routed experts becomes a zero expert, as in the reference code, unless
`unrouted_cluster: uniform`; see `harness.methods.merging`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.methods.base import Method

REGISTRY: dict[str, str] = {
    # pruning
    "reap": "harness.methods.reap:REAP",
    "ean": "harness.methods.ean:EAN",
    "frequency": "harness.methods.frequency:Frequency",
    "weighted_frequency": "harness.methods.weighted_frequency:WeightedFrequency",
    "random": "harness.methods.random_pruning:RandomPruning",
    # merging
    "hc_smoe": "harness.methods.hc_smoe:HCSMoE",
    "m_smoe": "harness.methods.m_smoe:MSMoE",
}

ENTRY_POINT_GROUP = "harness.methods"


class UnknownMethodError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def _all() -> dict[str, str]:
    found = dict(REGISTRY)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)  # built-in names cannot be shadowed
    return found


def method_names() -> list[str]:
    return sorted(_all())


def get_method_class(name: str) -> type[Method]:
    from harness.methods.base import Method

    registry = _all()
    if name not in registry:
        raise UnknownMethodError(f"unknown method {name!r}; known methods: {', '.join(sorted(registry))}")
    module_name, _, class_name = registry[name].partition(":")
    if not class_name:
        raise UnknownMethodError(f"method {name!r} is registered as {registry[name]!r}; expected 'module:Class'")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"method {name!r} resolves to {cls!r}, which is not a harness.methods.base.Method")
    if getattr(cls, "name", None) != name:
        raise TypeError(f"method {name!r} resolves to {cls.__name__}, whose name is {getattr(cls, 'name', None)!r}")
    return cls


def get_method(name: str, config: dict[str, Any] | None = None) -> Method:
    """An instance of method `name`; a bad option raises pydantic's ValidationError naming it."""
    return get_method_class(name)(config)
