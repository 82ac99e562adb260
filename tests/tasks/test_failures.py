"""Failure kinds (harness.tasks.failures): each detector on hand-built replies, the loop detector against a
brute-force reference, and the rates that reach the results table and samples.parquet."""

from __future__ import annotations

import random

import pandas as pd
import pytest

from harness.tasks.base import SampleRecord, TaskResult
from harness.tasks.failures import (
    DEGENERATE_MAX_UNIT,
    DEGENERATE_MIN_CHARS,
    DEGENERATE_MIN_REPEATS,
    code_failures,
    failure_label,
    failure_rates,
    is_degenerate,
    repeated_tail,
    reply_failures,
    sample_failures,
    task_kinds,
)

SOLUTION = ("Natalia sold 48 clips in April and half as many in May, 24. Altogether 48 + 24 = 72.\n"
            "The answer is \\boxed{72}.")


def _brute_loop(text: str) -> tuple[str, float] | None:
    """The definition read literally: for each unit length, walk back over the tail one character at a time."""
    s = text.rstrip()
    for unit in range(1, DEGENERATE_MAX_UNIT + 1):
        if unit >= len(s):
            break
        i = len(s) - 1
        while i - unit >= 0 and s[i] == s[i - unit]:
            i -= 1
        run = len(s) - 1 - i + unit  # characters from the start of the first unit to the end
        run = min(run, len(s))
        if run >= DEGENERATE_MIN_CHARS and run >= DEGENERATE_MIN_REPEATS * unit:
            return s[len(s) - run:len(s) - run + unit], run / unit
    return None


# -- reply kinds -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("output", "finish", "expected"), [
    ("", "stop", {"empty": True, "truncated": False, "degenerate": False}),
    ("  \n\t ", "stop", {"empty": True, "truncated": False, "degenerate": False}),
    (SOLUTION, "stop", {"empty": False, "truncated": False, "degenerate": False}),
    (SOLUTION[:40], "length", {"empty": False, "truncated": True, "degenerate": False}),
    (SOLUTION, None, {"empty": False, "truncated": None, "degenerate": False}),
    ("Let me think. " + "So x = 2. " * 6 + "So x", "length", {"empty": False, "truncated": True, "degenerate": True}),
    ("0" * 60, "length", {"empty": False, "truncated": True, "degenerate": True}),
])
def test_reply_kinds(output, finish, expected):
    assert reply_failures(output, finish) == expected


@pytest.mark.parametrize(("text", "unit", "times"), [
    ("Let me think. " + "So x = 2. " * 6 + "So x", "So x = 2. ", 6.4),
    ("def f():\n" + "    return 1\n" * 5, "    return 1\n", 5.0),
    ("ab" * 30, "ab", 30.0),
])
def test_loop_unit_and_count(text, unit, times):
    found = repeated_tail(text)
    assert found is not None
    got_unit, got_times = found
    # The shortest unit, read from where the loop starts (trailing whitespace is not part of the reply's tail).
    assert len(got_unit) == len(unit) and got_times == pytest.approx(times, abs=0.2)


@pytest.mark.parametrize("text", [
    "ha ha ha",  # a loop, but under DEGENERATE_MIN_CHARS
    "So x = 2. " * 6 + "The answer is 2.",  # the loop ended: the tail is an answer
    "A long sentence that is repeated exactly twice here. " * 2,  # 2 < DEGENERATE_MIN_REPEATS
    SOLUTION,
    "x" * 30 + " " * 40,  # trailing whitespace is not a loop
    "",
])
def test_not_degenerate(text):
    assert not is_degenerate(text)


def test_loop_detector_equals_brute_force_on_random_replies():
    rng = random.Random(7)
    alphabet = "ab c.\n"
    for _ in range(400):
        prefix = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        unit = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
        text = prefix + unit * rng.randint(1, 8) + unit[:rng.randint(0, len(unit))]
        fast, slow = repeated_tail(text), _brute_loop(text)
        assert (fast is None) == (slow is None), repr(text)
        if fast:
            assert fast[0] == slow[0] and fast[1] == pytest.approx(slow[1]), repr(text)


# -- answer kinds ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("code", "entry", "expected"), [
    (None, "f", ["no_code"]),
    ("   \n", "f", ["no_code"]),
    ("def f(x:\n    return x", "f", ["syntax_error"]),
    ("def g(x):\n    return x\n", "f", ["no_entry_point"]),
    ("def f(x):\n    return x\n", "f", []),
    ("async def f(x):\n    return x\n", "f", []),
    ("class f:\n    pass\n", "f", []),
    ("f = lambda x: x\n", "f", []),
    ("def g(x):\n    return x\n", None, []),  # entry point unknown: not checked
    ("import os\nif True:\n    def f(x):\n        return x\n", "f", ["no_entry_point"]),  # not at top level
])
def test_code_kinds(code, entry, expected):
    assert code_failures(code, entry) == expected


def _rec(output, extracted=None, score=0.0, **extra):
    return SampleRecord(sample_id=str(random.random()), prompt="p", output=output, extracted=extracted, score=score,
                        **extra)


def test_task_hooks_say_their_own_kinds():
    assert task_kinds("gsm8k") == ("empty", "truncated", "degenerate", "no_answer")
    assert task_kinds("humaneval_plus")[-3:] == ("no_code", "syntax_error", "no_entry_point")
    assert task_kinds("wildbench_creative") == ("empty", "truncated", "degenerate")
    found = sample_failures("gsm8k", _rec("I do not know.", None, finish_reason="stop"))
    assert found == {"empty": False, "truncated": False, "degenerate": False, "no_answer": True}
    assert failure_label(found) == "no_answer"
    coding = sample_failures("humaneval_plus", _rec("```python\ndef g(): return 1\n```", "def g(): return 1",
                                                    finish_reason="stop", entry_point="f"))
    assert failure_label(coding) == "no_entry_point"
    toy = sample_failures("toy_coding", _rec("no code here", "", finish_reason="length", entry_point="f"))
    assert failure_label(toy) == "truncated,no_code"
    assert sample_failures("livecodebench", _rec("```python\nprint(\n```", "print(", finish_reason="stop"))[
        "syntax_error"]
    # A log-likelihood sample has no reply: no kinds at all.
    assert sample_failures("arc_easy", _rec(None, 1)) is None


def test_rates_are_fractions_of_generative_samples():
    records = [_rec("", None, finish_reason="stop"), _rec(SOLUTION, "72", 1.0, finish_reason="stop"),
               _rec("So x = 2. " * 8, None, finish_reason="length"), _rec(SOLUTION, "72", 1.0, finish_reason="stop")]
    rates = failure_rates("gsm8k", records)
    assert rates == {"failure_rate:empty": 0.25, "failure_rate:truncated": 0.25, "failure_rate:degenerate": 0.25,
                     "failure_rate:no_answer": 0.5, "failure_rate:any": 0.5}
    # One sample without a finish reason: truncation is unknown, so its rate is left out, not guessed.
    records.append(_rec(SOLUTION, "72", 1.0))
    assert "failure_rate:truncated" not in failure_rates("gsm8k", records)
    assert failure_rates("arc_easy", [_rec(None, 1)]) == {}


def test_result_rows_and_samples_table_carry_the_kinds():
    from harness.results.table import result_rows, rows_to_frame, validate_samples

    records = [_rec("", None, finish_reason="stop"), _rec(SOLUTION, "72", 1.0, finish_reason="stop")]
    result = TaskResult(task="gsm8k", category="math", score=0.5, metrics={"accuracy": 0.5}, n_samples=2,
                        samples=records)
    base = {"model": "m", "method": "reap", "ratio": 0.5, "source": "harness"}
    table = rows_to_frame(result_rows([result], base))
    rates = table[table["metric"].str.startswith("failure_rate:")].set_index("metric")["value"]
    assert rates["failure_rate:empty"] == 0.5 and rates["failure_rate:no_answer"] == 0.5
    assert rates["failure_rate:truncated"] == 0.0 and (table["task"] == "math").sum() == 1

    from harness.sweep.stages.collect import sample_details

    rows = [{"model": "m", "method": "reap", "ratio": 0.5, "task": "gsm8k", "category": "math",
             "sample_id": r.sample_id, "score": r.score, **sample_details("gsm8k", r)} for r in records]
    samples = validate_samples(pd.DataFrame(rows))
    assert list(samples["failures"]) == ["empty,no_answer", ""]
    assert list(samples["failure_no_answer"]) == [True, False] and samples["output"].iloc[1] == SOLUTION
    assert samples["failure_no_code"].isna().all()  # not a coding task
