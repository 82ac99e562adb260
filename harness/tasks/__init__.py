"""Benchmark registry: task name -> "module:Class", imported on first use.

One module per benchmark family (coding, math, mc, creative, ...): a class in this package
with `name = "..."` is a task (found without importing it, harness.util.registry); an installed
package adds tasks through the `harness.tasks` entry-point group (name = task name, value =
"module:Class"), so listing and validating tasks never imports lm-eval, evalplus or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.util.registry import Registry

if TYPE_CHECKING:
    from harness.tasks.base import Task


class UnknownTaskError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


TASKS = Registry("task", "harness.tasks", "name", "harness.tasks.base:Task", "harness.tasks", UnknownTaskError)


def task_names() -> list[str]:
    return TASKS.names()


def get_task_class(name: str) -> type[Task]:
    return TASKS.resolve(name)


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
