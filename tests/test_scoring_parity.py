"""Parity with the official scorers: the same replies, scored by the harness and by the tools themselves.

A fake OpenAI-compatible server on loopback (tests/fake_openai.py) answers from a table
this module builds; the harness scores the replies through `python -m harness.evaluate`'s
own entry point (`harness.evaluate.main`: client, task, sandbox, files), and the official
tools score the very same text:

- EvalPlus: `evalplus.sanitize.sanitize` on the raw reply, then `evalplus.evaluate`'s
  `get_groundtruth` and `check_correctness` (its forked checker), in-process and offline.
  Base and plus verdicts must agree for every (problem, reply style).
- GSM8K / MATH-500: math-verify's `parse` + `verify` on the raw reply, and for GSM8K
  lm-eval's `flexible-extract` filter and `exact_match` metric as its installed gsm8k task
  configures them. Verdicts must agree wherever the definitions agree; each place where
  they differ on purpose is listed in DIFFERENCES with its reason, and pinned.

Agreement counts are printed (run with -s).
"""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

import pytest

from harness import evaluate as harness_evaluate
from harness.tasks.coding import HUMANEVAL_PLUS, MBPP_PLUS, chat_messages
from harness.tasks.math import PROMPT as MATH_PROMPT
from harness.tasks.math import gsm8k_gold, read_jsonl
from tests.conftest import DATASETS
from tests.fake_openai import fake_chat_server

N_PROBLEMS = 40  # per EvalPlus dataset
ROUNDS = 2  # reply styles per problem (one harness run per round)


@pytest.fixture(scope="module")
def server():
    with fake_chat_server() as fake:
        yield fake


def _harness(server, tmp: Path, tasks: list[str], *, options: dict | None = None, limit: int | None = None,
             work: Path | None = None) -> dict[str, list[dict]]:
    """Run `python -m harness.evaluate`'s main against the fake server; the samples of each task."""
    args = ["--base-url", server.base_url, "--model", "fake", "--tasks", ",".join(tasks), "--out", str(tmp),
            "--data-dir", str(DATASETS), "--quiet", "--concurrency", "8"]
    if options:
        args += ["--task-options", json.dumps(options)]
    if limit is not None:
        args += ["--limit", str(limit)]
    if work is not None:
        args += ["--work-dir", str(work)]
    assert harness_evaluate.main(args) == 0
    out = {}
    for task in tasks:
        with open(tmp / f"{task}.samples.jsonl", encoding="utf-8") as fh:
            out[task] = [json.loads(line) for line in fh]
    return out


# == EvalPlus =====================================================================================
def _renamed(code: str, entry: str, new: str) -> str:
    return re.sub(rf"\b{re.escape(entry)}\b", new, code)


def _styles(problem: dict, other: dict) -> dict[str, str]:
    """Replies a chat model might give, built from the canonical solution (and another problem's, for a wrong one)."""
    entry = problem["entry_point"]
    code = (problem["prompt"] + problem["canonical_solution"]).strip("\n")
    serial = _renamed(code, entry, f"_{entry}_serial")
    other_code = (other["prompt"] + other["canonical_solution"]).strip("\n")
    return {
        "correct": f"```python\n{code}\n```",
        "mutated wrong": (
            f"```python\n{serial}\n\n\ndef {entry}(*args):\n    result = _{entry}_serial(*args)\n"
            f"    if isinstance(result, bool):\n        return not result\n"
            f"    if isinstance(result, (int, float)):\n        return result + 1\n"
            f"    if isinstance(result, str):\n        return result + '!'\n"
            f"    if isinstance(result, (list, tuple)):\n        return type(result)(list(result)[1:])\n"
            f"    return None\n```"),
        "in prose": (f"Sure! Let's think about `{entry}` first: it needs to handle every case.\n\n"
                     f"Here is my solution:\n\n```python\n{code}\n\t# checked against the examples\n```\n\n"
                     f"The function `{entry}` runs in linear time. Let me know if you need anything else!"),
        "several code blocks": (f"First, how to call it:\n```python\nprint({entry}(*example))\n```\n"
                                f"The implementation:\n```python\n{code}\n```\nAnd a quick test:\n"
                                f"```python\nassert {entry} is not None\n```"),
        "helpers and imports": (
            f"```python\nimport math\nimport sys\nfrom typing import List, Tuple\n\n\ndef _unused_helper(x):\n"
            f"    return math.sqrt(x)\n\n\n{serial}\n\n\ndef {entry}(*args):\n"
            f"    return _{entry}_serial(*args)\n\n\nif __name__ == '__main__':\n"
            f"    print({entry}, file=sys.stderr)\n```"),
        "thread pool": (
            f"```python\nfrom concurrent.futures import ThreadPoolExecutor\n\n{serial}\n\n\n"
            f"def {entry}(*args):\n    with ThreadPoolExecutor(max_workers=4) as pool:\n"
            f"        return pool.submit(_{entry}_serial, *args).result()\n```"),
        "another problem's code": f"```python\n{other_code}\n```",
        "no code": "I am not sure how to solve this problem. It depends on the input, so I cannot write it.",
    }


STYLES = list(_styles({"entry_point": "f", "prompt": "", "canonical_solution": ""},
                      {"entry_point": "g", "prompt": "", "canonical_solution": ""}))


def _evalplus_problems(monkeypatch, tmp: Path) -> dict[str, dict[str, dict]]:
    """Both datasets as evalplus's own loaders read them (from the offline copies)."""
    import evalplus.data.humaneval as he
    import evalplus.data.mbpp as mbpp

    paths = {}
    for data in (HUMANEVAL_PLUS, MBPP_PLUS):
        plain = tmp / Path(data.offline).name.removesuffix(".gz")
        plain.write_bytes(gzip.decompress((DATASETS / data.offline).read_bytes()))
        paths[data.name] = str(plain)
    monkeypatch.setattr(he, "HUMANEVAL_OVERRIDE_PATH", paths["humaneval"])
    monkeypatch.setattr(mbpp, "MBPP_OVERRIDE_PATH", paths["mbpp"])
    return {"humaneval": he.get_human_eval_plus(), "mbpp": mbpp.get_mbpp_plus()}


def _evalplus_verdicts(dataset: str, problems: dict[str, dict], replies: dict[str, str],
                       cache: Path, monkeypatch) -> dict[str, tuple[str, bool, bool]]:
    """(sanitized code, base pass, plus pass) per task id, by evalplus's own sanitize and checker."""
    import evalplus.evaluate as ev
    from evalplus.eval import PASS
    from evalplus.sanitize import sanitize

    monkeypatch.setattr(ev, "CACHE_DIR", str(cache))
    subset = {t: problems[t] for t in replies}
    not_none = ev.MBPP_OUTPUT_NOT_NONE_TASKS if dataset == "mbpp" else []
    truth = ev.get_groundtruth(subset, f"parity-{dataset}-{len(subset)}", not_none)
    out = {}
    for task_id, reply in replies.items():
        code = sanitize(reply, problems[task_id]["entry_point"])
        # evalplus.evaluate's defaults: fast_check = not test_details = True
        result = ev.check_correctness(dataset, 0, problems[task_id], code, truth[task_id], fast_check=True)
        base = result["base"][0] == PASS
        out[task_id] = (code, base, base and result["plus"][0] == PASS)
    return out


def test_evalplus_verdicts_match_evalplus_on_the_same_replies(server, tmp_path, monkeypatch, capsys):
    official = _evalplus_problems(monkeypatch, tmp_path)
    tasks = {"humaneval": "humaneval_plus", "mbpp": "mbpp_plus"}
    chosen = {name: sorted(random.Random(22).sample(sorted(official[name]), N_PROBLEMS)) for name in tasks}
    rows = []  # (dataset, task id, style, harness code, harness base, harness plus, evalplus ...)
    for round_ in range(ROUNDS):
        table, replies = {}, {}
        for name, ids in chosen.items():
            replies[name] = {}
            for i, task_id in enumerate(ids):
                problem = official[name][task_id]
                style = STYLES[(i + 3 * round_) % len(STYLES)]
                reply = _styles(problem, official[name][ids[(i + 1) % len(ids)]])[style]
                prompt = chat_messages(problem["prompt"])[-1]["content"]
                table[prompt] = reply
                replies[name][task_id] = (style, reply)
        server.table = table
        options = {tasks[name]: {"task_ids": ids, "workers": 2} for name, ids in chosen.items()}
        samples = _harness(server, tmp_path / f"round{round_}", list(tasks.values()), options=options,
                           work=tmp_path / "work")
        for name, task in tasks.items():
            theirs = _evalplus_verdicts(name, official[name], {t: r for t, (_, r) in replies[name].items()},
                                        tmp_path / "evalplus-cache", monkeypatch)
            by_id = {s["sample_id"]: s for s in samples[task]}
            assert sorted(by_id) == chosen[name]
            for task_id, (style, reply) in replies[name].items():
                ours = by_id[task_id]
                assert ours["output"] == reply  # the reply the server gave is the one both scored
                rows.append((name, task_id, style, ours["extracted"], ours["base_status"] == "pass",
                             ours["base_status"] == ours["plus_status"] == "pass", *theirs[task_id]))

    same_code = [r for r in rows if r[3] == r[6]]
    same_base = [r for r in rows if r[4] == r[7]]
    same_plus = [r for r in rows if r[5] == r[8]]
    with capsys.disabled():
        for name in tasks:
            mine = [r for r in rows if r[0] == name]
            print(f"\nEvalPlus parity, {name}: {len({r[1] for r in mine})} problems, {len(mine)} replies; "
                  f"sanitized code equal {sum(r[3] == r[6] for r in mine)}/{len(mine)}, "
                  f"base verdicts equal {sum(r[4] == r[7] for r in mine)}/{len(mine)}, "
                  f"plus verdicts equal {sum(r[5] == r[8] for r in mine)}/{len(mine)}; "
                  f"passing (harness) base {sum(r[4] for r in mine)}, plus {sum(r[5] for r in mine)}")
        for style in STYLES:
            mine = [r for r in rows if r[2] == style]
            print(f"  {style:24s} n={len(mine):3d} base pass {sum(r[7] for r in mine):3d} "
                  f"plus pass {sum(r[8] for r in mine):3d} (evalplus); agree {sum(r[4] == r[7] and r[5] == r[8] for r in mine)}")
    assert len({(r[0], r[1]) for r in rows}) >= 2 * N_PROBLEMS
    assert {r[2] for r in rows} == set(STYLES)
    disagree = [(r[0], r[1], r[2], (r[4], r[5]), (r[7], r[8])) for r in rows if r[4] != r[7] or r[5] != r[8]]
    assert not disagree, disagree
    assert len(same_code) == len(rows), [(r[1], r[2]) for r in rows if r[3] != r[6]][:5]
    assert len(same_base) == len(same_plus) == len(rows)
    # the replies are a real test: both verdicts occur, and the styles that must pass or fail do
    by_style = {s: [r for r in rows if r[2] == s] for s in STYLES}
    for style in ("correct", "in prose", "several code blocks", "helpers and imports", "thread pool"):
        assert sum(r[8] for r in by_style[style]) >= 0.9 * len(by_style[style]), style
    for style in ("no code", "another problem's code"):
        assert not any(r[7] for r in by_style[style]), style
    assert sum(r[7] for r in by_style["mutated wrong"]) <= 0.25 * len(by_style["mutated wrong"])
