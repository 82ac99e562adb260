"""How a reply fails, not only whether: failure kinds per sample, rates per task and variant.

A compressed model that scores 20 points less may be answering wrongly, or no longer answering in
the format the scorer reads, or looping until max_tokens. These kinds tell those apart. They are
computed from the stored sample records (so cached evaluations get them without re-running) and
are not exclusive: a reply cut at max_tokens in a loop is both `truncated` and `degenerate`.

Kinds of every generative reply (a sample whose `output` is text; log-likelihood tasks have none):

=============== =====================================================================================
empty           the reply is empty or only whitespace
truncated       the server stopped it at max_tokens (OpenAI ``finish_reason == "length"``); unknown
                (None) when the record has no finish reason
degenerate      the reply ends in a loop: its last characters (trailing whitespace dropped) are one
                unit of 1..DEGENERATE_MAX_UNIT characters repeated back to back at least
                DEGENERATE_MIN_REPEATS times (a final partial unit allowed, as a reply cut at
                max_tokens has), the repeated run covering at least DEGENERATE_MIN_CHARS characters.
                E.g. "... so x = 2. So x = 2. So x = 2. So x = 2. So x" (unit "So x = 2. ", 4.2 times).
=============== =====================================================================================

Kinds a task adds from its own extraction (`Task.answer_failure_kinds` / `Task.answer_failures`):

=============== =====================================================================================
no_answer       math: no final answer could be extracted (no box, no "answer is", no number)
no_code         coding: nothing to run was extracted from the reply (no code block or code)
syntax_error    coding: the extracted program is not valid Python (often a cut-off code block)
no_entry_point  coding: the program parses but does not define the function the tests call
=============== =====================================================================================

`any` is a sample with at least one kind. Results rows: ``failure_rate:<kind>`` per task.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable, Sequence
from typing import Any

REPLY_KINDS = ("empty", "truncated", "degenerate")
ANSWER_KINDS = ("no_answer", "no_code", "syntax_error", "no_entry_point")
KINDS = REPLY_KINDS + ANSWER_KINDS
METRIC_PREFIX = "failure_rate:"
ANY = "any"

DEGENERATE_MIN_REPEATS = 3
DEGENERATE_MIN_CHARS = 40
DEGENERATE_MAX_UNIT = 200
_TAIL_WINDOW = 8192  # characters looked at: a longer loop is already far past the thresholds


# -- detectors ---------------------------------------------------------------------------------
def repeated_tail(text: str, *, min_repeats: int = DEGENERATE_MIN_REPEATS, min_chars: int = DEGENERATE_MIN_CHARS,
                  max_unit: int = DEGENERATE_MAX_UNIT) -> tuple[str, float] | None:
    """(unit, times repeated) of the shortest unit the reply's tail loops on, or None (module docstring)."""
    import numpy as np

    tail = text.rstrip()[-_TAIL_WINDOW:]
    if len(tail) < min_chars:
        return None
    codes = np.frombuffer(tail.encode("utf-32-le"), dtype=np.uint32)
    n = len(codes)
    for unit in range(1, min(max_unit, n // min_repeats) + 1):
        if tail[-1] != tail[-1 - unit]:  # cheap test first: most units fail on the last character
            continue
        same = codes[unit:] == codes[:-unit]  # same[i]: character i+unit repeats character i
        if not same[-1]:
            continue
        mismatches = np.flatnonzero(~same)
        run = (len(same) - (mismatches[-1] + 1 if len(mismatches) else 0)) + unit  # periodic suffix length
        if run >= min_chars and run >= min_repeats * unit:
            start = n - run
            return tail[start:start + unit], run / unit
    return None


def is_degenerate(text: str) -> bool:
    return repeated_tail(text) is not None


def reply_failures(output: str, finish_reason: str | None) -> dict[str, bool | None]:
    """The reply kinds of one generative sample (truncated None when the finish reason is unknown)."""
    return {
        "empty": not output.strip(),
        "truncated": None if finish_reason is None else finish_reason == "length",
        "degenerate": is_degenerate(output),
    }


def defines(tree: ast.Module, name: str) -> bool:
    """Whether a module defines `name` at top level (def, class, or an assignment)."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
    return False


def code_failures(code: str | None, entry_point: str | None) -> list[str]:
    """no_code / syntax_error / no_entry_point for an extracted program (entry point unknown: not checked)."""
    if code is None or not str(code).strip():
        return ["no_code"]
    try:
        tree = ast.parse(str(code))
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return ["syntax_error"]
    if entry_point and not defines(tree, entry_point):
        return ["no_entry_point"]
    return []


# -- per sample, per task ------------------------------------------------------------------------
@functools.cache  # resolving reads every installed package's entry points: once per name
def _task_class(task: str):
    from harness.tasks import get_task_class
    from harness.tasks.base import Task

    try:
        return get_task_class(task)
    except Exception:  # noqa: BLE001 — a task no longer registered (a plugin removed): reply kinds only
        return Task


def task_kinds(task: str) -> tuple[str, ...]:
    """The kinds reported for a generative task: the reply kinds, then the task's own."""
    return REPLY_KINDS + tuple(getattr(_task_class(task), "answer_failure_kinds", ()))


def sample_failures(task: str, record: Any) -> dict[str, bool | None] | None:
    """Every kind of `task_kinds(task)` for one SampleRecord; None for a non-generative sample (no text)."""
    output = getattr(record, "output", None)
    if not isinstance(output, str):
        return None
    extra = getattr(record, "model_extra", None) or {}
    found = reply_failures(output, extra.get("finish_reason"))
    cls = _task_class(task)
    own = set(cls.answer_failures(record)) if hasattr(cls, "answer_failures") else set()
    for kind in getattr(cls, "answer_failure_kinds", ()):
        found[kind] = kind in own
    return found


def failure_label(found: dict[str, bool | None] | None) -> str:
    """The kinds present, comma-separated ("" when none or not generative)."""
    return ",".join(k for k, v in (found or {}).items() if v)


def failure_rates(task: str, records: Sequence[Any]) -> dict[str, float]:
    """``failure_rate:<kind>`` (and ``failure_rate:any``) over a task's generative samples; {} if none.

    A kind unknown for some sample (truncated without a finish reason) is left out rather than guessed."""
    found = [f for f in (sample_failures(task, r) for r in records) if f is not None]
    if not found:
        return {}
    rates: dict[str, float] = {}
    for kind in task_kinds(task):
        values = [f.get(kind) for f in found]
        if any(v is None for v in values):
            continue
        rates[METRIC_PREFIX + kind] = sum(bool(v) for v in values) / len(values)
    rates[METRIC_PREFIX + ANY] = sum(any(bool(v) for v in f.values()) for f in found) / len(found)
    return rates


def kinds_in(metrics: Iterable[str]) -> list[str]:
    """Kind names of failure-rate metric names, in KINDS order, `any` last."""
    names = {m.removeprefix(METRIC_PREFIX) for m in metrics if m.startswith(METRIC_PREFIX)}
    return [k for k in KINDS if k in names] + sorted(names - set(KINDS) - {ANY}) + ([ANY] if ANY in names else [])
