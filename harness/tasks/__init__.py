"""Benchmark registry: task name -> "module:Class", imported on first use.

One module per benchmark family (coding, math, mc, creative, ...). A module registers
its tasks here by name; an installed package can add tasks through the
`harness.tasks` entry-point group (name = task name, value = "module:Class"), so
listing and validating tasks never imports lm-eval, evalplus or torch.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.tasks.base import Task

REGISTRY: dict[str, str] = {
    # coding
    "humaneval_plus": "harness.tasks.coding:HumanEvalPlus",
    "mbpp_plus": "harness.tasks.coding:MbppPlus",
    "livecodebench": "harness.tasks.livecodebench:LiveCodeBench",
    # math
    "gsm8k": "harness.tasks.math:GSM8K",
    "math500": "harness.tasks.math:Math500",
    # multiple choice (lm-eval)
    "arc_challenge": "harness.tasks.mc:ArcChallenge",
    "arc_easy": "harness.tasks.mc:ArcEasy",
    "boolq": "harness.tasks.mc:BoolQ",
    "hellaswag": "harness.tasks.mc:HellaSwag",
    "mmlu": "harness.tasks.mc:MMLU",
    "openbookqa": "harness.tasks.mc:OpenBookQA",
    "rte": "harness.tasks.mc:RTE",
    "winogrande": "harness.tasks.mc:WinoGrande",
    # creative writing (judged)
    "wildbench_creative": "harness.tasks.creative:WildBenchCreative",
    # the trained tiny model's toy suite
    "toy_math": "harness.tasks.toy:ToyMath",
    "toy_coding": "harness.tasks.toy:ToyCoding",
    "toy_mc": "harness.tasks.toy:ToyMC",
    "toy_creative": "harness.tasks.toy:ToyCreative",
}

ENTRY_POINT_GROUP = "harness.tasks"


class UnknownTaskError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def _all() -> dict[str, str]:
    found = dict(REGISTRY)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def task_names() -> list[str]:
    return sorted(_all())


def get_task_class(name: str) -> type[Task]:
    registry = _all()
    if name not in registry:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(sorted(registry))}")
    module_name, class_name = registry[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


# Other names a category goes by on the command line.
CATEGORY_ALIASES = {"creative": "creative_writing"}


def expand(names: list[str]) -> list[str]:
    """Task and category names -> registered task names, in order, without repeats. A category stands for
    its paper tasks that are registered; an unknown name raises UnknownTaskError listing what is known."""
    from harness.tasks.categories import PAPER_TASKS

    known = set(task_names())
    out: list[str] = []
    for item in names:
        category = CATEGORY_ALIASES.get(item, item)
        if item in known:
            expanded = [item]
        elif category in PAPER_TASKS:
            expanded = [t for t in PAPER_TASKS[category] if t in known]
        else:
            raise UnknownTaskError(f"unknown task or category {item!r}; categories: {', '.join(PAPER_TASKS)}; "
                                   f"tasks: {', '.join(sorted(known))}")
        out += [t for t in expanded if t not in out]
    return out
