"""GSM8K / MATH-500: extraction, math-verify equivalence on every real row, and a served run.

Gold answers (GSM8K's reference solutions, MATH-500's worked solutions) must score 1.0
on every row; answers shuffled between problems must score near 0, and never below
the rate at which two problems happen to share the same gold answer.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from harness.tasks.base import GenerationSettings, TaskContext
from harness.tasks.math import (
    GSM8K,
    Math500,
    extract_answer,
    gsm8k_gold,
    is_equivalent,
    last_boxed,
    read_jsonl,
    score_outputs,
)
from tests.conftest import DATASETS

GSM8K_FILE = DATASETS / "gsm8k" / "test.jsonl"
MATH500_FILE = DATASETS / "math500" / "test.jsonl"


def _derangement(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        if all(i != j for i, j in enumerate(perm)):
            return perm


# -- extraction ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, answer, how", [
    ("so the result is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}", "boxed"),
    ("first \\boxed{3}, corrected: \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)",
     "boxed"),
    ("nested \\boxed{\\sqrt{2}+{1}} done", "\\sqrt{2}+{1}", "boxed"),
    ("$\\fbox{42}$", "42", "boxed"),
    ("thus $\\boxed 7$", "7", "boxed"),
    ("She makes 9 * 2 = $<<9*2=18>>18.\n#### 18", "18", "hashes"),
    ("#### 1,234", "1234", "hashes"),
    ("12 apples, so The answer is 72.", "72", "answer_is"),
    ("the answer is: $\\frac{3}{4}$.", "\\frac{3}{4}", "answer_is"),
    # the answer, not the rest of its line (issue 22)
    ("The answer is 18 dollars.", "18", "answer_is"),
    ("The answer is 18. (I checked it 2 ways.)", "18", "answer_is"),
    ("The answer is 18, which is what she has left.", "18", "answer_is"),
    ("The answer is $18.", "18", "answer_is"),
    ("The answer is \\$1,000 in total.", "1000", "answer_is"),
    ("The answer is 5 m.", "5", "answer_is"),
    ("The answer is $18 \\text{ dollars}$.", "18 \\text{ dollars}", "answer_is"),
    ("The answer is (3, 4).", "(3, 4)", "answer_is"),
    ("the answer is 1, -2.", "1, -2", "answer_is"),
    ("The answer is -3.5, since 2 < 3.", "-3.5", "answer_is"),
    ("Answer: 12 (approx.)", "12", "answer_is"),
    ("### Final Answer\n**18**", "18", "answer_is"),
    ("**Final answer:** 7 apples", "7", "answer_is"),
    ("#### 18\nShe has 18 dollars left, 2 more than 16.", "18", "hashes"),
    ("She has 6 + 12 left.\n**18**", "18", "bold"),
    ("She earns **$18** every day.", "18", "bold"),
    ("**Step 1: add**\n6 + 12 = 18", "18", "last_number"),  # a heading is not an answer
    ("**18** eggs\nthen 2 more eggs", "2", "last_number"),  # a number after the bold line
    ("so x = \\frac{14}{3}", "x = \\frac{14}{3}", "latex_tail"),
    ("so x = $\\frac{14}{3}$.", "\\frac{14}{3}", "latex_tail"),
    ("so\n\\[\n\\frac{14}{3}\n\\]", "\\frac{14}{3}", "latex_tail"),
    ("the ratio is 14/3", "14/3", "latex_tail"),
    ("3 + 4 = 7, then 7 * 2 = 14 apples", "14", "last_number"),
    ("we need 1,000 or -2.5", "-2.5", "last_number"),
    ("no idea at all", None, "none"),
])
def test_extract_answer(text, answer, how):
    assert extract_answer(text) == (answer, how)


@pytest.mark.parametrize("reply, gold, correct", [
    ("The answer is 18 dollars.", "18", True), ("The answer is 25 dollars.", "18", False),
    ("The answer is 18. (I checked it 2 ways.)", "18", True),
    ("The answer is 18, which is what she has left.", "18", True),
    ("6 + 12 = 18, so she has\n**18**", "18", True), ("so x = \\frac{14}{3}", "\\frac{14}{3}", True),
    ("so x = \\frac{14}{3}", "3", False),
])
def test_issue_22_replies_score_as_read(reply, gold, correct):
    (_, _, ok), = score_outputs([reply], [gold])
    assert ok is correct


def test_unbalanced_box_falls_back():
    assert last_boxed("\\boxed{12") is None
    assert extract_answer("\\boxed{12") == ("12", "last_number")


@pytest.mark.parametrize("gold, answer, expected", [
    ("\\frac{1}{2}", "0.5", True), ("\\frac{1}{2}", "1/2", True), ("18", "18.00", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)", True), ("p - q", "-q + p", True),
    ("18", "19", False), ("\\frac{1}{2}", "\\frac{1}{3}", False), ("18", None, False), ("5", "x", False),
])
def test_equivalence(gold, answer, expected):
    assert is_equivalent(gold, answer) is expected


def test_gsm8k_gold_requires_hashes():
    assert gsm8k_gold("so 3 + 4 = 7\n#### 7") == "7"
    with pytest.raises(Exception, match="####"):
        gsm8k_gold("no final answer")


# -- every real row -------------------------------------------------------------------------
def test_gsm8k_gold_solutions_score_one_and_shuffled_near_zero():
    rows = read_jsonl(GSM8K_FILE)
    assert len(rows) == 1319
    golds = [gsm8k_gold(r["answer"]) for r in rows]
    # The reference solution text (calculator annotations and all) as the model's reply.
    assert all(ok for _, _, ok in score_outputs([r["answer"] for r in rows], golds))
    assert all(ok for _, _, ok in score_outputs([f"So the answer is \\boxed{{{g}}}." for g in golds], golds))

    perm = _derangement(len(rows), seed=0)
    shuffled = score_outputs([rows[j]["answer"] for j in perm], golds)
    rate = sum(ok for _, _, ok in shuffled) / len(rows)
    same_gold = sum(float(golds[i]) == float(golds[j]) for i, j in enumerate(perm)) / len(rows)
    assert same_gold <= rate < 0.05, (rate, same_gold)


def test_math500_gold_answers_score_one_and_shuffled_near_zero():
    rows = read_jsonl(MATH500_FILE)
    assert len(rows) == 500
    golds = [r["answer"] for r in rows]
    # Worked solutions end in \boxed{...}; the boxed form of the answer field must match too.
    assert all(ok for _, _, ok in score_outputs([r["solution"] for r in rows], golds))
    assert all(ok for _, _, ok in score_outputs([f"Hence $\\boxed{{{g}}}$." for g in golds], golds))

    perm = _derangement(len(rows), seed=1)
    shuffled = score_outputs([rows[j]["solution"] for j in perm], golds)
    rate = sum(ok for _, _, ok in shuffled) / len(rows)
    same_gold = sum(golds[i].replace(" ", "") == golds[j].replace(" ", "") for i, j in enumerate(perm)) / len(rows)
    assert same_gold <= rate < 0.05, (rate, same_gold)


# -- served -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(served_tiny):
    return served_tiny.endpoint


@pytest.mark.parametrize("task_cls, data_file", [(GSM8K, GSM8K_FILE), (Math500, MATH500_FILE)])
def test_served_run_scores_records_and_provenance(served, task_cls, data_file):
    settings = GenerationSettings(max_tokens=24, stop=["\n\n\n"])
    result = task_cls().run(TaskContext(endpoint=served, generation=settings, limit=3, data_dir=DATASETS,
                                        progress=False))
    rows = read_jsonl(data_file)[:3]
    assert result.status == "ok" and result.n_samples == 3 and len(result.samples) == 3
    for sample, row in zip(result.samples, rows, strict=True):
        question = row.get("question") or row["problem"]
        assert question in sample.prompt[0]["content"] and "\\boxed{}" in sample.prompt[0]["content"]
        assert 1 <= sample.completion_tokens <= 24
        # Each record's score is what scoring its own output against its own gold gives.
        assert sample.extracted == extract_answer(sample.output)[0]
        assert sample.score == float(is_equivalent(sample.target, sample.extracted))
    assert result.score == pytest.approx(sum(s.score for s in result.samples) / 3)
    assert result.metrics["accuracy"] == result.score
    prov = result.provenance
    assert prov["generation"]["max_tokens"] == 24 and prov["generation"]["temperature"] == 0.0
    assert prov["generation"]["stop"] == ["\n\n\n"]
    assert prov["generation"]["chat_template_kwargs"] == {"enable_thinking": False}
    expected_sha = hashlib.sha256(data_file.read_bytes()).hexdigest()
    assert prov["data_sha256"] == {data_file.name: expected_sha}
    template = (Path(served.tokenizer) / "chat_template.jinja").read_bytes()
    assert prov["chat_template_sha256"] == hashlib.sha256(template).hexdigest()
    assert "math-verify" in prov["tool_versions"] and prov["limit"] == 3
