"""WildBench's checklist judge: the score prompt, and a parser for the judge's reply.

The template is WildBench v2's `eval_template.score.v2.md` (read from the offline data
directory, or fetched from WildBench's repository at a pinned commit and checked
against its md5). Its placeholders are filled the way WildBench fills them: the
earlier turns as "USER: ...\\n\\nASSISTANT: ...\\n\\n", the last user turn, the model's
reply, and the checklist as a Markdown list. All four are substituted in one pass,
so a model reply that happens to contain "{$checklist}" is left as it is.

The judge answers with free text ending in a JSON object whose "score" is 1-10 (a
number or a numeric string). `parse_judge_score` returns that score, or None when
the reply holds no usable score (no JSON/"score" field, a non-number, a value outside
1-10): the caller counts those, it never guesses.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from harness.tasks.base import TaskError

TEMPLATE_FILE = "wildbench/eval_template.score.v2.md"  # under the data directory
TEMPLATE_URL = ("https://raw.githubusercontent.com/allenai/WildBench/d6b8dcaf377d173d031980f97c16e1a82618c03d/"
                "evaluation/eval_template.score.v2.md")
TEMPLATE_MD5 = "704e00b5b8bee98d80c0a27199d1fac7"
PLACEHOLDERS = ("{$history}", "{$user_query}", "{$model_output}", "{$checklist}")
EMPTY_OUTPUT_SCORE = 1.0  # WildBench scores an empty reply 1 without asking the judge
MIN_SCORE, MAX_SCORE = 1.0, 10.0

_PLACEHOLDER = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))
_SCORE_FIELD = re.compile(r'"score"\s*:\s*"?\s*([0-9]+(?:\.[0-9]+)?)\s*(?:/\s*10)?\s*"?\s*[,}\n]')
_NUMERIC = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(?:/\s*10)?\s*")


# -- the prompt ----------------------------------------------------------------------
def load_template(path: Path | None) -> tuple[str, str]:
    """(template text, where it came from): a local file, or the pinned upstream copy."""
    if path is not None:
        if not Path(path).is_file():
            raise TaskError(f"judge template {path} not found (expected WildBench's eval_template.score.v2.md)")
        text = Path(path).read_text(encoding="utf-8")
        source = str(path)
    else:
        import requests

        try:
            response = requests.get(TEMPLATE_URL, timeout=60)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise TaskError(f"could not fetch the WildBench judge template from {TEMPLATE_URL}: {exc}; "
                            "give --data-dir (with wildbench/eval_template.score.v2.md) instead") from exc
        text = response.content.decode("utf-8")
        if hashlib.md5(response.content).hexdigest() != TEMPLATE_MD5:
            raise TaskError(f"{TEMPLATE_URL} changed: md5 is not {TEMPLATE_MD5}")
        source = TEMPLATE_URL
    missing = [p for p in PLACEHOLDERS if p not in text]
    if missing:
        raise TaskError(f"judge template {source} lacks the placeholders {missing}")
    return text, source


def format_history(turns: list[dict[str, Any]]) -> str:
    """Every turn before the last, as WildBench writes history into the judge prompt."""
    parts = []
    for turn in turns[:-1]:
        if turn["role"] == "user":
            parts.append(f"USER: {turn['content']}\n\n")
        elif turn["role"] == "assistant":
            parts.append(f"ASSISTANT: {turn['content']}\n\n")
    return "".join(parts)


def format_checklist(checklist: list[str]) -> str:
    return "".join(f"- {item}\n" for item in checklist)


def build_judge_prompt(template: str, turns: list[dict[str, Any]], model_output: str, checklist: list[str]) -> str:
    """The judge's prompt for one reply to the conversation `turns` (last turn = the user's query)."""
    if not turns or turns[-1]["role"] != "user":
        raise TaskError("a WildBench conversation must end with a user turn")
    values = {
        "{$history}": format_history(turns),
        "{$user_query}": turns[-1]["content"],
        "{$model_output}": model_output,
        "{$checklist}": format_checklist(checklist),
    }
    return _PLACEHOLDER.sub(lambda m: values[m.group(0)], template)


# -- the reply -----------------------------------------------------------------------
def _balanced_objects(text: str) -> list[str]:
    """Every top-level {...} substring (brace-balanced, ignoring braces inside strings)."""
    found, depth, start, in_string, escaped = [], 0, -1, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"' and depth > 0:
            in_string = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                found.append(text[start:i + 1])
    return found


def _as_score(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        score = float(value)
    elif isinstance(value, str) and (m := _NUMERIC.fullmatch(value)):
        score = float(m.group(1))
    else:
        return None
    return score if MIN_SCORE <= score <= MAX_SCORE else None


def parse_judge_score(reply: str | None) -> float | None:
    """The judge's 1-10 score, or None when the reply has no usable score.

    Tries, last first, every JSON object in the reply (bare or in a ``` fence) that has
    a "score" key; then a `"score": 7` field in JSON too broken to load. A score
    that is not a number or lies outside 1-10 makes the reply unparseable.
    """
    if not reply:
        return None
    for blob in reversed(_balanced_objects(reply)):
        try:
            obj = json.loads(blob.strip(), strict=False)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "score" in obj:
            return _as_score(obj["score"])
    fields = _SCORE_FIELD.findall(reply + "\n")
    return _as_score(fields[-1]) if fields else None


def rescale(score: float) -> float:
    """1-10 -> [0, 1], as (s - 1) / 9."""
    return (score - MIN_SCORE) / (MAX_SCORE - MIN_SCORE)
