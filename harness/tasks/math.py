"""GSM8K (test, 0-shot, chat) and MATH-500, scored with math-verify.

The model is asked to reason step by step and put its final answer in \\boxed{}.
`extract_answer` reads the answer itself, not the rest of its line; the first rule that
finds one wins:

1. the last \\boxed{...}: "\\boxed{3}, no: \\boxed{4}" -> "4";
2. after the last "####", "answer is", "final answer" or "Answer:", the first number or
   expression, units, punctuation, a parenthesis or a following clause dropped:
   "The answer is 18 dollars." -> "18", "The answer is 18. (I checked it 2 ways.)" -> "18",
   "The answer is 18, which is what she has left." -> "18", "#### 18\\nShe has 18 left,
   2 more than 16." -> "18", "The final answer is $\\frac{3}{4}$." -> "\\frac{3}{4}";
3. the last bold span, when it is an answer and no number follows its line:
   "... so she has\\n**18**" -> "18";
4. a LaTeX expression (delimited or not) or a fraction that ends the reply:
   "so x = \\frac{14}{3}" -> "x = \\frac{14}{3}" (not "3");
5. the last number: "3 + 4 = 7, then 7 * 2 = 14 apples" -> "14".

The extracted text and the gold answer are both parsed by math-verify and compared
with its `verify`, so "0.5", "\\frac{1}{2}" and "1/2" are the same answer (and "x = 5" is
5). The task score is the accuracy. Where this differs from math-verify's own extraction
on the raw reply or from lm-eval's gsm8k filters, on purpose: README, "Math answer
extraction"; tests/tasks/test_scoring_parity.py pins each difference.
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
# Where a reply states its answer: "#### x", "the answer is x", "final answer: x", "Answer: x".
_MARKER = re.compile(r"####|\banswer\s+is\b|\bfinal\s+answer\b|^\W*answer\s*:", re.IGNORECASE | re.MULTILINE)
# What may stand between a marker and the answer: "is", "=", ":", bold and heading marks, blank space.
_MARKER_FILLER = re.compile(r"(?:\s|\*\*|#+|:|=|\bis\b|\bwas\b|\bwould be\b|\bwill be\b|\bequals\b|\bof\b)*",
                            re.IGNORECASE)
_BOLD = re.compile(r"\*\*([^*\n]+?)\*\*")
_BOLD_LABEL = re.compile(r"^\s*[A-Za-z][A-Za-z ]{0,30}:\s*")  # "**Answer: 18**", "**Total: 18**"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_GROUPED_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_WORD = re.compile(r"[^\W\d_]+")  # letters of any script (str.isalpha agrees)
_FRACTION = re.compile(r"-?\d+\s*/\s*\d+")
# Words that belong to an expression (functions, constants), not to the prose around it.
_MATH_WORDS = frozenset({"sqrt", "pi", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "inf",
                         "infty", "arcsin", "arccos", "arctan", "mod"})
_SENTENCE_END = frozenset(";!?\n")
_OPEN, _CLOSE = "([{", ")]}"
_DELIMITERS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))


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


def _has_prose(text: str) -> bool:
    """Whether `text` holds a word of prose (two or more letters, not a LaTeX command or a math word)."""
    text = re.sub(r"\\(?:text|textbf|mbox|mathrm|operatorname)\s*\{[^{}]*\}", " ", text)
    return any(m.start() == 0 or text[m.start() - 1] != "\\" for m in _WORD.finditer(text)
               if len(m.group()) >= 2 and m.group().lower() not in _MATH_WORDS)


def _closing(text: str, start: int) -> int | None:
    """Index of the bracket closing the one at `start` (None if it is never closed)."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] in _OPEN:
            depth += 1
        elif text[i] in _CLOSE:
            depth -= 1
            if depth == 0:
                return i
    return None


def _scan(text: str) -> tuple[str, bool]:
    """The expression at the start of `text` and whether it ran to the end of its sentence.

    An expression is numbers, operators, single-letter variables, LaTeX commands and
    bracketed groups; it stops at a word of prose ("dollars", "which"), at a bracket that
    holds prose ("(I checked it 2 ways.)"), at a full stop, colon or end of line, and at a
    comma unless what follows the comma is itself a whole expression ("(1, 2)", "1, -2").
    """
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in _SENTENCE_END or ch == ":" or ch == "$" or text.startswith("**", i):
            return text[:i], True  # a line, a clause, a math span or a bold span ends
        if ch == "." and not (i + 1 < n and text[i + 1].isdigit()):
            return text[:i], True
        if ch in _OPEN:
            end = _closing(text, i)
            if end is None or (ch != "{" and _has_prose(text[i + 1:end])):
                return text[:i], end is None
            i = end + 1
            continue
        if ch in _CLOSE:
            return text[:i], False
        if ch == "," and i and text[i - 1].isdigit() and re.match(r",\d{3}(?!\d)", text[i:]):
            i += 4  # thousands grouping: "1,000"
            continue
        if ch == ",":
            rest, whole = _scan(text[i + 1:])
            if rest.strip() and whole:
                return text[:i + 1] + rest, True
            return text[:i], False
        if ch == "\\":
            command = re.match(r"\\(?:[A-Za-z]+|.)?", text[i:], re.S)  # a lone trailing backslash too
            name = command.group()[1:]
            if name in ("text", "textbf", "mbox", "mathrm") and text[:i].strip():
                return text[:i], False  # a unit after the number: "18 \text{ dollars}"
            i += len(command.group())
            continue
        if ch.isalpha():
            word = _WORD.match(text, i).group()
            after_number = text[:i].rstrip() != text[:i] and bool(re.search(r"\d\s+$", text[:i]))
            if (len(word) >= 2 and word.lower() not in _MATH_WORDS) or (len(word) == 1 and after_number):
                return text[:i], False  # prose, or a one-letter unit after a number ("5 m")
            i += len(word)
            continue
        i += 1
    return text, True


def _delimited(text: str) -> tuple[str, int] | None:
    """(content, end) of the LaTeX math span opening `text` ($..$, $$..$$, \\(..\\), \\[..\\]) if it is math."""
    for left, right in _DELIMITERS:
        if text.startswith(left):
            end = text.find(right, len(left))
            if end < 0 or (left == "$" and "\n" in text[:end]):
                return None
            content = text[len(left):end].strip()
            if content and not _has_prose(content):
                return content, end + len(right)
            return None
    return None


def _leading_answer(text: str) -> str | None:
    """The number or expression that `text` starts with (after a marker or inside bold), if any.

    Delimited LaTeX is taken whole ("$\\frac{3}{4}$"); a "$" that delimits nothing is a
    currency sign ("$18."); units, punctuation, a parenthesis or a following clause end it.
    """
    text = text.lstrip()
    if _BOX.match(text):
        return last_boxed(text.split("\n", 1)[0])
    span = _delimited(text)
    if span is not None:
        return span[0]
    text = re.sub(r"^(?:\\\$|\$)\s*", "", text)  # a currency sign
    found, _ = _scan(text)
    found = found.strip().rstrip("=,*+ ").strip()
    if not found or not re.search(r"[\d\\]|^[A-Za-z]$|^[A-Za-z]\W", found):
        return None
    return found


def _marked_answer(text: str) -> tuple[str, str] | None:
    """(answer, "hashes" | "answer_is") after the last marker ("####", "answer is", "final answer", "Answer:")
    that is followed by one."""
    for match in reversed(list(_MARKER.finditer(text))):
        tail = text[match.end():]
        tail = tail[_MARKER_FILLER.match(tail).end():]
        found = _leading_answer(tail)
        if found and _clean(found):
            return _clean(found), "hashes" if match.group() == "####" else "answer_is"
    return None


def _bold_answer(text: str) -> str | None:
    """The last bold span that is an answer ("**18**", "**$18**", "**Total: 18**"), if no number follows its line."""
    spans = list(_BOLD.finditer(text))
    if not spans:
        return None
    last = spans[-1]
    line_end = text.find("\n", last.end())
    if line_end >= 0 and re.search(r"\d", text[line_end:]):
        return None
    content = _BOLD_LABEL.sub("", last.group(1))
    if not re.match(r"\s*(?:-|\$|\\|\d|\()", content):
        return None
    return _leading_answer(content)


def _latex_tail(text: str) -> str | None:
    """A LaTeX expression (delimited or not), a power, a subscript or a fraction that ends the reply.

    "so x = \\frac{14}{3}" -> "x = \\frac{14}{3}", "so it is 2516_8" -> "2516_8", "the result is p - q" ->
    "p - q"; a plain number (or a lone letter, a unit) is left to the last-number rule.
    """
    body = text.rstrip().rstrip(".!").rstrip()
    lines = body.split("\n")
    last = lines[-1]
    for left, right in _DELIMITERS:  # the reply ends with a delimited span: take it whole
        if body.endswith(right):
            start = body.rfind(left, 0, len(body) - len(right))
            span = _delimited(body[start:]) if start >= 0 else None
            if span is not None and span[1] == len(body) - start:
                return span[0]
            break
    window = last[-400:]
    for start in range(len(window)):
        if start and not (window[start - 1].isspace() or window[start - 1] in "=:,"):
            continue
        found, whole = _scan(window[start:])
        if whole and found.strip() and found.strip() == window[start:].strip():
            found = found.strip()
            algebra = re.search(r"[A-Za-z]", found) and re.search(r"[-+*/=<>\d]", found)  # "p - q", "2x"
            if re.search(r"[\\^_]", found) or _FRACTION.search(found) or algebra:  # more than a plain number
                return found
            return None
    return None


def extract_answer(text: str) -> tuple[str | None, str]:
    """(answer, how): the first rule that finds an answer, in this order.

    - "boxed": the last \\boxed{} / \\fbox{} ("\\boxed{3} ... \\boxed{4}" -> "4").
    - "hashes" / "answer_is": after the last "####" / "answer is", "final answer" or "Answer:", the
      first number or expression, without units, punctuation, a parenthesis or a following
      clause ("The answer is 18 dollars." -> "18"; "The answer is 18. (I checked it 2 ways.)"
      -> "18"; "The answer is 18, which is what she has left." -> "18";
      "#### 18\\nShe has 18 left, 2 more than 16." -> "18").
    - "bold": the last bold span when it is an answer and no number follows its line
      ("... so she has\\n**18**" -> "18"; "**Answer: $18**" -> "18").
    - "latex_tail": a LaTeX expression or fraction that ends the reply, delimited or not
      ("so x = \\frac{14}{3}" -> "x = \\frac{14}{3}", not "3").
    - "last_number": the last number in the reply ("3 + 4 = 7, then 7 * 2 = 14 apples" -> "14").
    - "none": nothing found.
    """
    boxed = last_boxed(text)
    if boxed:
        return _clean(boxed), "boxed"
    marked = _marked_answer(text)
    if marked:
        return marked
    for rule, how in ((_bold_answer, "bold"), (_latex_tail, "latex_tail")):
        found = rule(text)
        if found and _clean(found):
            return _clean(found), how
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
    version = "2"  # 2: the answer, not the rest of its line (issue 22)
    local_file = "gsm8k/test.jsonl"
    hf = ("openai/gsm8k", "main", "test")

    def problem(self, row: dict[str, Any]) -> str:
        return row["question"]

    def gold(self, row: dict[str, Any]) -> str:
        return gsm8k_gold(row["answer"])


class Math500(_MathTask):
    """MATH-500 (HuggingFaceH4/MATH-500, test), gold = the `answer` field."""

    name = "math500"
    version = "2"  # 2: the answer, not the rest of its line; a trailing LaTeX expression (issue 22)
    local_file = "math500/test.jsonl"
    hf = ("HuggingFaceH4/MATH-500", None, "test")

    def problem(self, row: dict[str, Any]) -> str:
        return row["problem"]

    def gold(self, row: dict[str, Any]) -> str:
        return row["answer"]

    def sample_id(self, index: int, row: dict[str, Any]) -> str:
        return row.get("unique_id") or str(index)
