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
ROUNDS = 1  # reply styles per problem (one harness run per round); the styles rotate over the problems
# Per-input time limits, the same for both tools (evalplus's defaults are 1 s and 4x the canonical time):
# generous, so that a loaded test machine cannot turn a pass into a timeout on one side only.
TIME_LIMITS = {"min_time_limit": 4.0, "gt_time_limit_factor": 8.0}


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
        with open(tmp / task / "samples.jsonl", encoding="utf-8") as fh:
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


def _evalplus_problems(monkeypatch, tmp: Path) -> tuple[dict[str, dict[str, dict]], dict[str, str]]:
    """Both datasets as evalplus's own loaders read them (from the offline copies), and those copies' paths."""
    import evalplus.data.humaneval as he
    import evalplus.data.mbpp as mbpp

    paths = {}
    for data in (HUMANEVAL_PLUS, MBPP_PLUS):
        plain = tmp / Path(data.offline).name.removesuffix(".gz")
        plain.write_bytes(gzip.decompress((DATASETS / data.offline).read_bytes()))
        paths[data.name] = str(plain)
    monkeypatch.setattr(he, "HUMANEVAL_OVERRIDE_PATH", paths["humaneval"])
    monkeypatch.setattr(mbpp, "MBPP_OVERRIDE_PATH", paths["mbpp"])
    return {"humaneval": he.get_human_eval_plus(), "mbpp": mbpp.get_mbpp_plus()}, paths


# evalplus's own sanitize and checker, run as evalplus runs: in a fresh interpreter. Its checker forks a process per
# solution and caps that process's address space (4 GiB); forked from this test process (torch, vLLM and the rest of
# the suite loaded) the cap leaves no room for a thread's stack, and evalplus would fail every threaded solution.
_EVALPLUS_REFERENCE = r"""
import json, sys
import evalplus.data.humaneval as he
import evalplus.data.mbpp as mbpp
import evalplus.evaluate as ev
from evalplus.eval import PASS
from evalplus.sanitize import sanitize

args = json.load(sys.stdin)
he.HUMANEVAL_OVERRIDE_PATH, mbpp.MBPP_OVERRIDE_PATH = args["paths"]["humaneval"], args["paths"]["mbpp"]
ev.CACHE_DIR = args["cache"]
dataset, replies = args["dataset"], args["replies"]
problems = he.get_human_eval_plus() if dataset == "humaneval" else mbpp.get_mbpp_plus()
subset = {t: problems[t] for t in replies}
not_none = ev.MBPP_OUTPUT_NOT_NONE_TASKS if dataset == "mbpp" else []
truth = ev.get_groundtruth(subset, f"parity-{dataset}-{len(subset)}", not_none)
out = {}
for task_id, reply in replies.items():
    code = sanitize(reply, problems[task_id]["entry_point"])
    # evalplus.evaluate's defaults: fast_check = not test_details = True
    result = ev.check_correctness(dataset, 0, problems[task_id], code, truth[task_id], fast_check=True,
                                  **args["limits"])
    base = result["base"][0] == PASS
    out[task_id] = (code, base, base and result["plus"][0] == PASS)
print(json.dumps(out))
"""


def _evalplus_verdicts(dataset: str, paths: dict[str, str], replies: dict[str, str],
                       cache: Path) -> dict[str, tuple[str, bool, bool]]:
    """(sanitized code, base pass, plus pass) per task id, by evalplus's own sanitize and checker."""
    import subprocess
    import sys

    request = {"dataset": dataset, "paths": paths, "replies": replies, "cache": str(cache), "limits": TIME_LIMITS}
    done = subprocess.run([sys.executable, "-c", _EVALPLUS_REFERENCE], input=json.dumps(request),
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    return {t: tuple(v) for t, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def test_evalplus_verdicts_match_evalplus_on_the_same_replies(server, tmp_path, monkeypatch, capsys):
    official, paths = _evalplus_problems(monkeypatch, tmp_path)
    tasks = {"humaneval": "humaneval_plus", "mbpp": "mbpp_plus"}
    chosen = {name: sorted(random.Random(22).sample(sorted(official[name]), N_PROBLEMS)) for name in tasks}
    rows = []  # (dataset, task id, style, harness code, harness base, harness plus, evalplus ...)
    for round_ in range(ROUNDS):
        table, replies = {}, {}
        for name, ids in chosen.items():
            replies[name] = {}
            for i, task_id in enumerate(ids):
                problem = official[name][task_id]
                style = STYLES[(i + 3 * round_ + (name == "mbpp")) % len(STYLES)]
                reply = _styles(problem, official[name][ids[(i + 1) % len(ids)]])[style]
                prompt = chat_messages(problem["prompt"])[-1]["content"]
                table[prompt] = reply
                replies[name][task_id] = (style, reply)
        server.table = table
        options = {tasks[name]: {"task_ids": ids, "workers": 2, **TIME_LIMITS} for name, ids in chosen.items()}
        samples = _harness(server, tmp_path / f"round{round_}", list(tasks.values()), options=options,
                           work=tmp_path / "work")
        for name, task in tasks.items():
            theirs = _evalplus_verdicts(name, paths, {t: r for t, (_, r) in replies[name].items()},
                                        tmp_path / "evalplus-cache")
            by_id = {s["sample_id"]: s for s in samples[task]}
            assert sorted(by_id) == chosen[name]
            for task_id, (style, reply) in replies[name].items():
                ours = by_id[task_id]
                assert ours["output"] == reply  # the reply the server gave is the one both scored
                rows.append((name, task_id, style, ours["extracted"], ours["base_status"] == "pass",
                             ours["base_status"] == ours["plus_status"] == "pass", *theirs[task_id],
                             # why ours failed, for the message of a disagreement
                             (ours["base_status"], ours.get("base_sandbox_failure"), ours["plus_status"],
                              ours.get("plus_sandbox_failure"))))

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
            agree = sum(r[4] == r[7] and r[5] == r[8] for r in mine)
            print(f"  {style:24s} n={len(mine):3d} base pass {sum(r[7] for r in mine):3d} "
                  f"plus pass {sum(r[8] for r in mine):3d} (evalplus); agree {agree}")
        for r in rows:  # shown even when the test is an expected failure: the cause of each disagreement
            if r[4] != r[7] or r[5] != r[8]:
                print(f"  DISAGREE {r[0]} {r[1]} ({r[2]}): ours base/plus {r[4]}/{r[5]}, evalplus {r[7]}/{r[8]}; "
                      f"ours (base status, sandbox failure, plus status, sandbox failure) = {r[9]}")
    assert len({(r[0], r[1]) for r in rows}) >= 2 * N_PROBLEMS
    assert {r[2] for r in rows} == set(STYLES)
    disagree = [(r[0], r[1], r[2], (r[4], r[5]), (r[7], r[8]), r[9]) for r in rows if r[4] != r[7] or r[5] != r[8]]
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


# == GSM8K / MATH-500 ===============================================================================
N_MATH = 12  # first rows of each dataset (the tasks' --limit)
GSM8K_WORK = "Let me work it out step by step. First, 3 + 4 = 7. Then 7 * 2 = 14.\n"
MATH_WORK = "We simplify step by step: $3 + 4 = 7$ and $7 \\cdot 2 = 14$.\n"

# phrasing -> reply for the stated answer `a` (and `b`, an answer given first and then replaced)
GSM8K_PHRASINGS = {
    "boxed": lambda a, b: f"{GSM8K_WORK}So the total is \\boxed{{{a}}}",
    "boxed in $..$.": lambda a, b: f"{GSM8K_WORK}So the total is $\\boxed{{{a}}}$.",
    "####": lambda a, b: f"{GSM8K_WORK}#### {a}",
    "answer is": lambda a, b: f"{GSM8K_WORK}The answer is {a}.",
    "final answer $..$": lambda a, b: f"{GSM8K_WORK}The final answer is ${a}$.",
    "last number": lambda a, b: f"{GSM8K_WORK}So she has {a} left",
    "answer is + units": lambda a, b: f"{GSM8K_WORK}The answer is {a} dollars.",
    "answer is + parenthesis": lambda a, b: f"{GSM8K_WORK}The answer is {a}. (I checked it 2 ways.)",
    "answer is + clause": lambda a, b: f"{GSM8K_WORK}The answer is {a}, which is what she has left.",
    "bold last line": lambda a, b: f"{GSM8K_WORK}Adding it all up:\n**{a}**",
    "several boxes in $..$": lambda a, b: f"{GSM8K_WORK}At first I got $\\boxed{{{b}}}$, but corrected: "
                                          f"$\\boxed{{{a}}}$",
    "#### then text": lambda a, b: f"{GSM8K_WORK}#### {a}\nShe has {a} dollars left, 2 more than 16.",
    "decimal": lambda a, b: f"{GSM8K_WORK}The answer is {a}.00",
}
MATH_PHRASINGS = {
    "boxed": lambda a, b: f"{MATH_WORK}So the answer is $\\boxed{{{a}}}$.",
    "final answer $..$": lambda a, b: f"{MATH_WORK}The final answer is ${a}$.",
    "answer is + parenthesis": lambda a, b: f"{MATH_WORK}The answer is ${a}$. (I checked it 2 ways.)",
    "answer is + clause": lambda a, b: f"{MATH_WORK}The answer is ${a}$, which is what we wanted.",
    "bold last line": lambda a, b: f"{MATH_WORK}Therefore:\n**${a}$**",
    "trailing $..$": lambda a, b: f"{MATH_WORK}so the result is ${a}$.",
    "trailing \\[..\\]": lambda a, b: f"{MATH_WORK}so the result is\n\\[\n{a}\n\\]",
    "trailing undelimited LaTeX": lambda a, b: f"{MATH_WORK}so the result is {a}",
    "several boxes in $..$": lambda a, b: f"{MATH_WORK}At first I got $\\boxed{{{b}}}$, but corrected: "
                                          f"$\\boxed{{{a}}}$",
    "several boxes on one line": lambda a, b: f"{MATH_WORK}first \\boxed{{{b}}} then \\boxed{{{a}}}",
}

# Where our definition differs from the official tool's on purpose: (tool, task, phrasing) -> why.
# In these cells the harness must score every reply as stated (right answer right, wrong answer
# wrong), and the tool must disagree with it on exactly the (gold, stated) pairs listed in PINNED.
DIFFERENCES = {
    ("lm-eval", "gsm8k", "boxed in $..$."): "lm-eval's flexible regex [$0-9.,]{2,} reads the closing '$.' as the "
                                             "last number",
    ("lm-eval", "gsm8k", "answer is + parenthesis"): "lm-eval takes the last number, '2' of '(I checked it 2 ways.)'",
    ("lm-eval", "gsm8k", "#### then text"): "lm-eval's flexible-extract takes the last number, not the one after ####",
    ("lm-eval", "gsm8k", "decimal"): "lm-eval compares strings ('18.00' != '18'); we compare values (math-verify)",
    ("math-verify", "gsm8k", "#### then text"): "math-verify ignores '####' and takes the last number of the text",
    ("math-verify", "math500", "several boxes on one line"): "math-verify reads every box on the line as one answer; "
                                                             "we take the last box, the model's final word",
    ("math-verify", "math500", "trailing undelimited LaTeX"): "math-verify reads only part of an undelimited "
                                                              "expression such as '12\\pi'; we read it whole",
    ("math-verify", "math500", "answer is + parenthesis"): "math-verify may take a number after the stated answer "
                                                          "('2' of '(I checked it 2 ways.)')",
}


def _lm_eval_gsm8k():
    """lm-eval's gsm8k 'flexible-extract' filter and exact_match metric, as its installed task YAML sets them."""
    import lm_eval
    import yaml
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter
    from lm_eval.filters.selection import TakeFirstFilter

    config = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())
    (flexible,) = [f["filter"] for f in config["filter_list"] if f["name"] == "flexible-extract"]
    regex = RegexFilter(regex_pattern=flexible[0]["regex_pattern"], group_select=flexible[0]["group_select"])
    assert [f["function"] for f in flexible] == ["regex", "take_first"]
    (metric,) = config["metric_list"]

    def correct(reply: str, answer_field: str) -> bool:
        (extracted,) = TakeFirstFilter().apply(regex.apply([[reply]], [None]), [None])
        score = exact_match_hf_evaluate([extracted], [answer_field], regexes_to_ignore=metric["regexes_to_ignore"],
                                        ignore_case=metric["ignore_case"],
                                        ignore_punctuation=metric["ignore_punctuation"])
        return score["exact_match"] == 1.0

    return correct


def _math_verify(reply: str, gold: str) -> bool:
    from math_verify import parse, verify

    return bool(verify(parse(f"${gold}$"), parse(reply)))


def _wrong(gold: str, others: list[str]) -> str:
    """An answer that is not the gold one: the next other gold answer that differs in value."""
    from harness.tasks.math import is_equivalent

    return next(o for o in others if not is_equivalent(gold, o))


def test_math_verdicts_match_math_verify_and_lm_eval(server, tmp_path, capsys):
    data = {"gsm8k": read_jsonl(DATASETS / "gsm8k" / "test.jsonl")[:N_MATH],
            "math500": read_jsonl(DATASETS / "math500" / "test.jsonl")[:N_MATH]}
    golds = {"gsm8k": [gsm8k_gold(r["answer"]) for r in data["gsm8k"]],
             "math500": [r["answer"] for r in data["math500"]]}
    questions = {"gsm8k": [r["question"] for r in data["gsm8k"]], "math500": [r["problem"] for r in data["math500"]]}
    phrasings = {"gsm8k": GSM8K_PHRASINGS, "math500": MATH_PHRASINGS}
    combos = {task: [(name, right) for name in table for right in (True, False)] for task, table in phrasings.items()}
    lm_eval_correct = _lm_eval_gsm8k()
    cells = []  # (task, phrasing, index, stated right, reply, harness extracted, harness verdict)
    for k in range(max(len(c) for c in combos.values())):
        table, expected, tasks = {}, {}, []
        for task, task_combos in combos.items():
            if k >= len(task_combos):
                continue
            tasks.append(task)
            name, right = task_combos[k]
            for i, gold in enumerate(golds[task]):
                wrong = _wrong(gold, golds[task][i + 1:] + golds[task][:i])
                reply = phrasings[task][name](*((gold, wrong) if right else (wrong, gold)))
                table[MATH_PROMPT.format(problem=questions[task][i])] = reply
                expected[(task, i)] = (name, right, reply)
        server.table = table
        samples = _harness(server, tmp_path / f"math{k}", tasks, limit=N_MATH)
        for task in tasks:
            assert len(samples[task]) == N_MATH
            for i, sample in enumerate(samples[task]):
                name, right, reply = expected[(task, i)]
                assert sample["output"] == reply and sample["target"] == golds[task][i]
                cells.append((task, name, i, right, reply, sample["extracted"], sample["score"] == 1.0))

    # our definition: every phrasing is read as stated
    misread = [(c[0], c[1], golds[c[0]][c[2]], c[3], c[5]) for c in cells if c[6] != c[3]]
    assert not misread, misread
    verdicts = {"math-verify": {(c[0], c[1], c[2], c[3]): _math_verify(c[4], golds[c[0]][c[2]]) for c in cells},
                "lm-eval": {(c[0], c[1], c[2], c[3]): lm_eval_correct(c[4], data["gsm8k"][c[2]]["answer"])
                            for c in cells if c[0] == "gsm8k"}}
    ours = {(c[0], c[1], c[2], c[3]): c[6] for c in cells}
    unexpected, differences_seen = [], {}
    for tool, theirs in verdicts.items():
        for key, verdict in theirs.items():
            task, name = key[0], key[1]
            if (tool, task, name) in DIFFERENCES:
                differences_seen.setdefault((tool, task, name), 0)
                differences_seen[(tool, task, name)] += verdict != ours[key]
            elif verdict != ours[key]:
                unexpected.append((tool, task, name, golds[task][key[2]], "stated right" if key[3] else "stated wrong",
                                   f"ours {ours[key]}, theirs {verdict}"))
    with capsys.disabled():
        for tool, theirs in verdicts.items():
            for task in phrasings:
                keys = [k for k in theirs if k[0] == task]
                if not keys:
                    continue
                agreeing = [k for k in keys if (tool, task, k[1]) not in DIFFERENCES]
                print(f"\nmath parity, {task} vs {tool}: {len(keys)} replies ({len(phrasings[task])} phrasings x "
                      f"{N_MATH} problems x right/wrong), verdicts equal {sum(theirs[k] == ours[k] for k in keys)}"
                      f"/{len(keys)}; where the definitions agree {sum(theirs[k] == ours[k] for k in agreeing)}"
                      f"/{len(agreeing)}")
        for key, n in sorted(differences_seen.items()):
            print(f"  documented difference {key}: {n} of {2 * N_MATH} replies scored differently ({DIFFERENCES[key]})")
    assert not unexpected, unexpected
    # each documented difference is real (pinned: were a tool to change, the list must change with it)
    assert set(differences_seen) == set(DIFFERENCES)
    assert all(n > 0 for n in differences_seen.values()), differences_seen
