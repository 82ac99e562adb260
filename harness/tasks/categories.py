"""Category scores from task scores, defined as the paper defines them.

- coding: the EvalPlus average (mean of HumanEval+ and MBPP+, each the mean of its
  base and plus pass@1, i.e. the mean of the four numbers); when LiveCodeBench also
  ran, the mean of the EvalPlus average and LiveCodeBench (the paper's
  Code Avg = (EvalPlus + LiveCodeBench) / 2).
- math, mc, creative_writing: the mean of the task scores.
Tasks that did not run (e.g. rte offline) are listed in `missing`, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.tasks.base import TaskResult

EVALPLUS_TASKS = ("humaneval_plus", "mbpp_plus")
# The paper's task lists per category; a category score over fewer tasks says which are missing.
PAPER_TASKS: dict[str, tuple[str, ...]] = {
    "coding": (*EVALPLUS_TASKS, "livecodebench"),
    "math": ("gsm8k", "math500"),
    "mc": ("arc_challenge", "arc_easy", "boolq", "hellaswag", "mmlu", "openbookqa", "rte", "winogrande"),
    "creative_writing": ("wildbench_creative",),
}


@dataclass
class CategoryScore:
    category: str
    value: float
    definition: str
    tasks: list[str]
    missing: list[str] = field(default_factory=list)


def combine(category: str, scores: Mapping[str, Any]) -> tuple[Any, str]:
    """(category value, its definition) from task scores — floats, or arrays of bootstrap means (the same
    rule applies elementwise; harness.results.compare uses it so its category intervals score as the table does)."""
    if category == "coding":
        evalplus = [scores[t] for t in EVALPLUS_TASKS if t in scores]
        others = [v for t, v in scores.items() if t not in EVALPLUS_TASKS]
        parts = ([sum(evalplus) / len(evalplus)] if evalplus else []) + others
        definition = ("mean(EvalPlus avg, LiveCodeBench)" if evalplus and "livecodebench" in scores
                      else "EvalPlus avg = mean(HumanEval+ base, plus, MBPP+ base, plus)" if evalplus
                      else "mean of task scores")
        return sum(parts) / len(parts), definition
    values = list(scores.values())
    return sum(values) / len(values), "mean of task scores"


def category_score(category: str, results: list[TaskResult]) -> CategoryScore | None:
    """The category's score from the results of its tasks (None when none ran)."""
    ran = {r.task: r for r in results if r.category == category and r.status == "ok" and r.score is not None}
    not_run = sorted(r.task for r in results if r.category == category and r.status != "ok")
    if not ran:
        return None
    value, definition = combine(category, {t: r.score for t, r in ran.items()})
    return CategoryScore(category, float(value), definition, sorted(ran), not_run)
