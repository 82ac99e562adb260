"""GSM8K (test, 0-shot, chat) and MATH-500, scored with math-verify.

The model is asked to reason step by step and put its final answer in \\boxed{}.
Extraction tries, in order: the last \\boxed{...}; GSM8K's "#### x"; the last
"The answer is x"; the last number in the reply. The extracted text and the gold
answer are both parsed by math-verify and compared with its `verify`, so "0.5",
"\\frac{1}{2}" and "1/2" are the same answer. The task score is the accuracy.
"""

from __future__ import annotations

import json
import re
import threading
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean
from typing import Any, ClassVar

from harness.tasks.base import SampleRecord, Task, TaskContext, TaskError, TaskResult
from harness.tasks.client import chat_many

PROMPT = ("Solve the following math problem. Reason step by step, then give the final answer "
          "in \\boxed{{}}.\n\n{problem}")

_BOX = re.compile(r"\\(?:boxed|fbox)\s*")
_HASHES = re.compile(r"####\s*([^\n]+)")
_ANSWER_IS = re.compile(r"answer is\s*:?\s*([^\n]+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_GROUPED_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


# -- extraction -------------------------------------------------------------------------
def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...} (balanced braces), or of `\\boxed 5`."""
    found = None
    for match in _BOX.finditer(text):
        rest = text[match.end():]
        if rest.startswith("{"):
            depth = 0
            for i, ch in enumerate(rest):
                depth += (ch == "{") - (ch == "}")
                if depth == 0:
                    found = rest[1:i]
                    break
        else:  # `\boxed 5`: up to the next space or `$`
            word = re.match(r"[^\s$]+", rest)
            if word:
                found = word.group(0)
    return found.strip() if found is not None else None


def _clean(answer: str) -> str:
    answer = answer.strip().rstrip(".").strip()
    if len(answer) >= 2 and answer.startswith("$") and answer.endswith("$"):
        answer = answer.strip("$").strip()
    if _GROUPED_NUMBER.fullmatch(answer):  # "1,000" is a number, not a tuple
        answer = answer.replace(",", "")
    return answer


def extract_answer(text: str) -> tuple[str | None, str]:
    """(answer, how): how is "boxed", "hashes", "answer_is", "last_number" or "none"."""
    boxed = last_boxed(text)
    if boxed:
        return _clean(boxed), "boxed"
    hashes = _HASHES.findall(text)
    if hashes:
        return _clean(hashes[-1]), "hashes"
    stated = _ANSWER_IS.findall(text)
    if stated and _clean(stated[-1]):
        return _clean(stated[-1]), "answer_is"
    numbers = _NUMBER.findall(text)
    if numbers:
        return _clean(numbers[-1].rstrip(",")), "last_number"
    return None, "none"


def gsm8k_gold(answer_field: str) -> str:
    """The final answer after GSM8K's "####"."""
    found = _HASHES.findall(answer_field)
    if not found:
        raise TaskError(f"GSM8K answer without '#### <answer>': {answer_field[-80:]!r}")
    return _clean(found[-1])


# -- equivalence ----------------------------------------------------------------------
def _timeout() -> int | None:
    # math-verify's timeouts use SIGALRM, which only the main thread may set.
    return 5 if threading.current_thread() is threading.main_thread() else None


def parse_math(answer: str) -> list[Any]:
    """math-verify's parse of one bare answer (LaTeX or plain expression)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return parse(f"${answer}$", [LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=_timeout())


def is_equivalent(gold: list[Any] | str, answer: str | None) -> bool:
    """math-verify's verdict on an extracted answer against a gold answer (parsed or text)."""
    from math_verify import verify

    if answer is None:
        return False
    gold_parsed = parse_math(gold) if isinstance(gold, str) else gold
    predicted = parse_math(answer)
    if not gold_parsed or not predicted:
        return False
    return bool(verify(gold_parsed, predicted, timeout_seconds=_timeout()))


def score_outputs(outputs: Sequence[str], golds: Sequence[str]) -> list[tuple[str | None, str, bool]]:
    """(extracted answer, extraction route, correct) for each output against its gold answer."""
    if len(outputs) != len(golds):
        raise ValueError(f"{len(outputs)} outputs for {len(golds)} gold answers")
    scored = []
    for output, gold in zip(outputs, golds, strict=True):
        answer, how = extract_answer(output)
        scored.append((answer, how, is_equivalent(gold, answer)))
    return scored


# -- data ------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise TaskError(f"data file {path} not found (check --data-dir; expected the ../shared/datasets layout)")
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def hf_rows(path: str, config: str | None, split: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of a Hugging Face dataset split, and what identifies the copy that was read."""
    import datasets

    try:
        ds = datasets.load_dataset(path, config, split=split)
    except Exception as exc:  # offline, gated, renamed ...
        raise TaskError(f"could not load {path} ({config}, {split}) from the Hugging Face hub: {exc}; "
                        "give --data-dir with offline copies instead") from exc
    return list(ds), {"hf_dataset": path, "hf_config": config, "hf_split": split, "hf_fingerprint": ds._fingerprint}


# -- tasks -----------------------------------------------------------------------------
class _MathTask(Task):
    """Shared run loop; subclasses say where the data is and what the gold answer is."""

    category: ClassVar[str] = "math"
    answer_failure_kinds: ClassVar[tuple[str, ...]] = ("no_answer",)
    local_file: ClassVar[str]  # relative to data_dir
    hf: ClassVar[tuple[str, str | None, str]]  # (path, config, split)

    def data_files(self, data_dir: Path) -> list[Path]:
        return [data_dir / self.local_file]

    @abstractmethod
    def problem(self, row: dict[str, Any]) -> str: ...

    @abstractmethod
    def gold(self, row: dict[str, Any]) -> str: ...

    def sample_id(self, index: int, row: dict[str, Any]) -> str:
        return str(index)

    @classmethod
    def answer_failures(cls, record: SampleRecord) -> list[str]:
        return ["no_answer"] if record.extracted is None else []

    def load(self, ctx: TaskContext) -> tuple[list[dict[str, Any]], list[Path], dict[str, Any]]:
        if ctx.data_dir is not None:
            path = ctx.data_dir / self.local_file
            return read_jsonl(path), [path], {}
        rows, source = hf_rows(*self.hf)
        return rows, [], source

    def run(self, ctx: TaskContext) -> TaskResult:
        rows, files, source = self.load(ctx)
        provenance = {**self.base_provenance(ctx, files), **source, "prompt_template": PROMPT,
                      "n_available": len(rows)}
        rows = rows[:ctx.limit] if ctx.limit is not None else rows
        if not rows:
            raise TaskError(f"{self.name}: no samples to evaluate (limit={ctx.limit})")
        conversations = [[{"role": "user", "content": PROMPT.format(problem=self.problem(r))}] for r in rows]
        completions = chat_many(ctx.endpoint, conversations, ctx.generation,
                                desc=self.name if ctx.progress else None)
        golds = [self.gold(r) for r in rows]
        scored = score_outputs([c.text for c in completions], golds)
        samples = [
            SampleRecord(sample_id=self.sample_id(i, row), prompt=conv, output=comp.text, extracted=answer,
                         target=gold, score=float(ok), extraction=how, finish_reason=comp.finish_reason,
                         completion_tokens=comp.completion_tokens)
            for i, (row, conv, comp, gold, (answer, how, ok)) in
            enumerate(zip(rows, conversations, completions, golds, scored, strict=True))
        ]
        accuracy = fmean(s.score for s in samples)
        metrics = {
            "accuracy": accuracy,
            "extracted_fraction": fmean(s.extracted is not None for s in samples),
            "boxed_fraction": fmean(s.extraction == "boxed" for s in samples),
            "truncated_fraction": fmean(c.finish_reason == "length" for c in completions),
            "mean_completion_tokens": fmean(c.completion_tokens for c in completions),
        }
        provenance["math_verify_timeouts"] = _timeout() is not None
        return TaskResult(task=self.name, category=self.category, score=accuracy, metrics=metrics,
                          n_samples=len(samples), samples=samples, provenance=provenance)


class GSM8K(_MathTask):
    """GSM8K test split, 0-shot with the chat template (openai/gsm8k, config main)."""

    name = "gsm8k"
    local_file = "gsm8k/test.jsonl"
    hf = ("openai/gsm8k", "main", "test")

    def problem(self, row: dict[str, Any]) -> str:
        return row["question"]

    def gold(self, row: dict[str, Any]) -> str:
        return gsm8k_gold(row["answer"])


class Math500(_MathTask):
    """MATH-500 (HuggingFaceH4/MATH-500, test), gold = the `answer` field."""

    name = "math500"
    local_file = "math500/test.jsonl"
    hf = ("HuggingFaceH4/MATH-500", None, "test")

    def problem(self, row: dict[str, Any]) -> str:
        return row["problem"]

    def gold(self, row: dict[str, Any]) -> str:
        return row["answer"]

    def sample_id(self, index: int, row: dict[str, Any]) -> str:
        return row.get("unique_id") or str(index)
