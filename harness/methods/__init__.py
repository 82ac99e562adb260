"""Compression-method registry: method name -> "module:Class", imported on first use.

One module per method: a class in this package with `name = "..."` is a method (found
without importing it, harness.util.registry); an installed package adds methods through the
`harness.methods` entry-point group (name = method name, value = "module:Class"), so
listing methods or validating a sweep never imports torch.

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

from typing import TYPE_CHECKING, Any

from harness.util.registry import Registry

if TYPE_CHECKING:
    from harness.methods.base import Method


class UnknownMethodError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


METHODS = Registry("method", "harness.methods", "name", "harness.methods.base:Method", "harness.methods",
                   UnknownMethodError)


def method_names() -> list[str]:
    return METHODS.names()


def get_method_class(name: str) -> type[Method]:
    return METHODS.resolve(name)


def get_method(name: str, config: dict[str, Any] | None = None) -> Method:
    """An instance of method `name`; a bad option raises pydantic's ValidationError naming it."""
    return get_method_class(name)(config)


class StatisticsMismatchError(ValueError):
    """Statistics recorded on one family, applied to another model."""


def make_plan(stats, method_name: str, method_config: dict[str, Any] | None, ratio: float, model):
    """The one way a plan is made (the sweep's plan stage and `python -m harness.compress`): the method's
    plan of `stats` at `ratio` under the expert constraints of `model` (a directory or a config dict),
    after checking that the statistics belong to that model's family."""
    from harness.archs import get_arch, read_config
    from harness.methods.constraints import ExpertConstraints

    config = model if isinstance(model, dict) else read_config(model)
    arch = get_arch(config)
    family = stats.manifest.get("family")
    if family and family != arch.model_type:
        raise StatisticsMismatchError(f"the statistics are of a {family} model but the model is {arch.model_type}")
    method = get_method(method_name, method_config or {})
    constraints = ExpertConstraints.from_arch(arch)
    return method.plan(stats, ratio, constraints, calibration_key=str(stats.manifest.get("key", "")))
