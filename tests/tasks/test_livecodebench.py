"""LiveCodeBench: data decoding, prompts, grading of known-good and known-bad programs, the coding
category score, and one end-to-end run against a served tiny model.

The fixture (tests/fixtures/livecodebench) holds problems written for these tests in the exact
code_generation_lite schema, with programs that must pass and programs that must fail.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import pickle
import time
import zlib
from datetime import date
from pathlib import Path

import pydantic
import pytest
import requests
import yaml

from harness.tasks import get_task_class
from harness.tasks.base import Endpoint, GenerationSettings, TaskContext, TaskError, TaskResult
from harness.tasks.categories import category_score
from harness.tasks.livecodebench import (
    SYSTEM_MESSAGE,
    LiveCodeBench,
    conversation,
    decode_private_tests,
    extract_code,
    grade,
    iter_rows,
    parse_problem,
    release_files,
    stdout_matches,
)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"  # the data_dir: FIXTURES/livecodebench/code_generation_lite/test*.jsonl
FIXTURE = FIXTURES / "livecodebench"
SHARDS = FIXTURE / "code_generation_lite"
DEFINITIONS = yaml.safe_load((FIXTURE / "problems.yaml").read_text())["problems"]
PAPER_TABLE = REPO.parent / "shared" / "reference" / "paper_large_scale_table.csv"
IN_DEFAULT_WINDOW = ["lcbfix_sum_max", "lcbfix_half_sum", "3901", "3902"]  # dataset order, 2025-01-01..07-31
RUN_S = 4.0  # time limit for programs that should finish (generous: the machine is shared)
HANG_S = 1.0  # time limit for programs that never finish


def fixture_task(**options) -> LiveCodeBench:
    return LiveCodeBench({"release_version": "v5_v6", "source": "local", **options})


def offline_ctx(**kw) -> TaskContext:
    return TaskContext(endpoint=Endpoint(base_url="http://127.0.0.1:9/v1", model="none"), data_dir=FIXTURES, **kw)


def problems_by_id() -> dict:
    return {p.question_id: p for p in map(parse_problem, iter_rows(sorted(SHARDS.glob("test*.jsonl"))))}


# -- data ------------------------------------------------------------------------------
def test_registry_resolves_the_task():
    assert get_task_class("livecodebench") is LiveCodeBench
    assert LiveCodeBench.category == "coding"


@pytest.mark.parametrize("version, files", [
    ("release_v1", ["test.jsonl"]),
    ("release_v6", ["test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl", "test5.jsonl", "test6.jsonl"]),
    ("release_latest", ["test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl", "test5.jsonl", "test6.jsonl"]),
    ("v1", ["test.jsonl"]),
    ("v6", ["test6.jsonl"]),
    ("v5_v6", ["test5.jsonl", "test6.jsonl"]),
    ("v1_v3", ["test.jsonl", "test2.jsonl", "test3.jsonl"]),
])
def test_release_files(version, files):
    assert release_files(version) == files


@pytest.mark.parametrize("version", ["release_v7", "v0", "v6_v5", "latest", "x1", "v2_v9", ""])
def test_unknown_release_is_refused(version):
    with pytest.raises(ValueError, match="unknown LiveCodeBench release"):
        release_files(version)
    with pytest.raises(pydantic.ValidationError):
        LiveCodeBench({"release_version": version})


def test_fixture_is_built_from_its_definitions(tmp_path):
    """The committed shards are exactly what build_fixture.py writes from problems.yaml."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_fixture", FIXTURE / "build_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.build(FIXTURE / "problems.yaml", tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in SHARDS.glob("test*.jsonl"))
    for path in written:
        assert path.read_bytes() == (SHARDS / path.name).read_bytes(), f"rerun build_fixture.py ({path.name})"


def test_rows_have_the_dataset_schema_and_tests_decode():
    rows = list(iter_rows(sorted(SHARDS.glob("test*.jsonl"))))
    assert len(rows) == len(DEFINITIONS)
    schema = ["question_title", "question_content", "platform", "question_id", "contest_id", "contest_date",
              "starter_code", "difficulty", "public_test_cases", "private_test_cases", "metadata"]
    encodings = set()
    definitions = {str(d["question_id"]): d for d in DEFINITIONS}
    for row in rows:
        definition = definitions[row["question_id"]]
        assert list(row) == schema and all(isinstance(v, str) for v in row.values())
        encodings.add("json" if row["private_test_cases"].startswith("[") else "compressed")
        testtype = "functional" if definition.get("func_name") else "stdin"
        expected = [{"input": t["input"], "output": t["output"], "testtype": testtype}
                    for t in definition["private_tests"]]
        assert decode_private_tests(row["private_test_cases"]) == expected
        problem = parse_problem(row)
        assert [(t.input, t.output, t.public) for t in problem.tests] == (
            [(t["input"], t["output"], True) for t in definition["public_tests"]]
            + [(t["input"], t["output"], False) for t in definition["private_tests"]])
        assert problem.func_name == definition.get("func_name") and problem.style == testtype
    assert encodings == {"json", "compressed"}  # both encodings of the real dataset are exercised


class _Boom:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize("payload", ["reduce", "global"])
def test_private_tests_never_unpickle_globals(tmp_path, payload):
    target = tmp_path / "created-by-unpickling"
    obj = _Boom(str(target)) if payload == "reduce" else [os.getpid]
    if payload == "reduce":  # plain pickle runs the payload's code ...
        pickle.loads(pickle.dumps(obj))
        assert target.is_dir()
        target.rmdir()
    encoded = base64.b64encode(zlib.compress(pickle.dumps(obj))).decode()
    with pytest.raises(TaskError, match="refusing to load global"):
        decode_private_tests(encoded)
    assert not target.exists()


def test_private_tests_reject_garbage():
    with pytest.raises(TaskError, match="neither JSON nor base64"):
        decode_private_tests("not base64 at all!")
    not_a_string = base64.b64encode(zlib.compress(pickle.dumps([1, 2]))).decode()
    with pytest.raises(TaskError, match="expected a pickled JSON string"):
        decode_private_tests(not_a_string)


@pytest.mark.parametrize("window, ids", [
    ({}, IN_DEFAULT_WINDOW),  # the paper's window: both ends inclusive
    ({"start_date": None, "end_date": None},
     ["lcbfix_square_old", "lcbfix_sum_max", "lcbfix_half_sum", "3901", "3902", "lcbfix_double_late"]),
    ({"start_date": "2025-02-01", "end_date": "2025-03-31"}, ["lcbfix_half_sum", "3901"]),
    ({"start_date": "2025-07-31"}, ["3902"]),
])
def test_release_window(window, ids):
    problems, files, dataset = fixture_task(**window).load(offline_ctx())
    assert [p.question_id for p in problems] == ids
    assert [f.name for f in files] == ["test5.jsonl", "test6.jsonl"]
    assert dataset["n_problems_in_release"] == 6 and dataset["n_problems_in_window"] == len(ids)
    assert dataset["source"] == "local" and dataset["release_version"] == "v5_v6"


def test_missing_local_data_is_a_clear_error(tmp_path):
    task = LiveCodeBench({"source": "local"})  # release_v6: test.jsonl .. test6.jsonl
    ctx = TaskContext(endpoint=Endpoint(base_url="http://127.0.0.1:9/v1", model="none"), data_dir=tmp_path)
    problems = task.check_ready(ctx)
    assert len(problems) == 6 and "livecodebench/code_generation_lite/test.jsonl" in problems[0]
    with pytest.raises(TaskError, match="missing .*test.jsonl"):
        task.load(ctx)


def test_hub_source_offline_uses_the_hf_cache(tmp_path, monkeypatch):
    """Without internet the hub path reads shards cached by an earlier download, and records their commit."""
    import shutil

    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "datasets--livecodebench--code_generation_lite"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    task = LiveCodeBench({"release_version": "v5_v6", "source": "hub"})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TaskError, match="could not download livecodebench/code_generation_lite"):
        task.load(offline_ctx())  # nothing cached yet
    (repo / "snapshots" / commit).mkdir(parents=True)
    for shard in ("test5.jsonl", "test6.jsonl"):
        shutil.copy(SHARDS / shard, repo / "snapshots" / commit / shard)
    problems, files, dataset = task.load(offline_ctx())  # data_dir is ignored with source "hub"
    assert [p.question_id for p in problems] == IN_DEFAULT_WINDOW
    assert (dataset["source"], dataset["revision"]) == ("hub", commit)
    assert all(str(f).startswith(str(repo)) for f in files)


def test_options_and_sampling_override():
    harness = GenerationSettings(temperature=0.0, top_p=1.0, max_tokens=512, seed=3)
    ctx = offline_ctx(generation=harness)
    settings = LiveCodeBench().generation(ctx)
    assert (settings.temperature, settings.top_p, settings.max_tokens, settings.seed) == (0.2, 0.95, 2000, 3)
    kept = LiveCodeBench({"temperature": None, "top_p": None, "max_tokens": None}).generation(ctx)
    assert kept == harness
    defaults = LiveCodeBench().options
    assert (defaults.start_date, defaults.end_date, defaults.n) == (date(2025, 1, 1), date(2025, 7, 31), 1)
    with pytest.raises(pydantic.ValidationError, match="after end_date"):
        LiveCodeBench({"start_date": "2025-08-01", "end_date": "2025-01-01"})
    with pytest.raises(pydantic.ValidationError):
        LiveCodeBench({"temperatur": 0.2})


# -- prompts and extraction ---------------------------------------------------------------
def test_prompts_follow_livecodebench():
    problems = problems_by_id()
    stdin, functional = problems["lcbfix_half_sum"], problems["3901"]
    assert conversation(stdin) == [
        {"role": "system", "content": SYSTEM_MESSAGE},
        {"role": "user", "content": (
            f"### Question:\n{stdin.question_content}\n\n"
            "### Format: Read the inputs from stdin solve the problem and write the answer to stdout (do not "
            "directly test on the sample inputs). Enclose your code within delimiters as follows.\n"
            "```python\n# YOUR CODE HERE\n```\n\n"
            "### Answer: (use the provided format with backticks)\n\n")},
    ]
    assert conversation(functional)[1]["content"] == (
        f"### Question:\n{functional.question_content}\n\n"
        "### Format: You will use the following starter code to write the solution to the problem and enclose "
        "your code within delimiters.\n"
        "```python\nclass Solution:\n    def rotateRight(self, nums: List[int], k: int) -> List[int]:\n        \n"
        "```\n\n### Answer: (use the provided format with backticks)\n\n")
    assert SYSTEM_MESSAGE.startswith("You are an expert Python programmer.")
    merged = conversation(functional, system_in_user=True)
    assert len(merged) == 1 and merged[0]["role"] == "user"
    assert merged[0]["content"] == SYSTEM_MESSAGE + "\n\n" + conversation(functional)[1]["content"]


@pytest.mark.parametrize("text, code", [
    ("```python\nprint(1)\n```", "print(1)"),
    ("Here:\n```python\na = 1\nprint(a)\n```\nand\n```python\nprint(2)\n```", "a = 1\nprint(a)"),
    ("```\nx = 2\n```", "x = 2"),
    ("print(1)", ""),  # no fences: nothing to run
    ("```python\nprint(1)", ""),  # unterminated (e.g. truncated) block
    ("", ""),
])
def test_extract_code(text, code):
    assert extract_code(text) == code


@pytest.mark.parametrize("got, expected, same", [
    ("8\n5\n", "8\n5\n", True),
    ("8  \n 5\n\n", "8\n5", True),  # surrounding whitespace and blank trailing lines
    ("2.50\n", "2.5\n", True),  # numbers compare as decimals
    ("1e1", "10", True),
    ("3.0", "3", True),
    ("1  2", "1 2", True),
    ("0.333", "0.3333", False),  # exact decimals: no tolerance
    ("8\n5\n6", "8\n5", False),
    ("8", "8\n5", False),
    ("YES", "yes", False),
    ("1 2", "1 2 3", False),
    ("", "", True),
    ("abc 1", "abc 1.0", False),  # a non-number token: text must match
])
def test_stdout_matches(got, expected, same):
    assert stdout_matches(got, expected) is same


# -- grading: every fixture program against its problem -----------------------------------------
SOLUTIONS = [(d["question_id"], name) for d in DEFINITIONS for name in d["solutions"]]
_EXPECTED_FAILURES = {  # (problem, program) -> verdict of the first failing test, which test
    ("lcbfix_sum_max", "wrong_passes_public_only"): ("wrong_answer", False),  # only a private test catches it
    ("lcbfix_sum_max", "wrong_crashes"): ("runtime_error", True),
    ("lcbfix_half_sum", "wrong"): ("wrong_answer", True),
    ("lcbfix_half_sum", "wrong_syntax"): ("compile_error", True),
    ("3901", "wrong"): ("wrong_answer", True),
    ("3901", "wrong_method_name"): ("runtime_error", True),
    ("3901", "wrong_syntax"): ("compile_error", True),
    ("3902", "wrong"): ("wrong_answer", True),
}


@pytest.mark.parametrize("qid, name", SOLUTIONS, ids=[f"{q}-{n}" for q, n in SOLUTIONS])
def test_fixture_programs(qid, name):
    problem = problems_by_id()[str(qid)]
    code = next(d for d in DEFINITIONS if d["question_id"] == qid)["solutions"][name]
    limit = HANG_S if name == "hang" else RUN_S
    started = time.monotonic()
    result = grade(problem, code, timeout_s=limit, memory_mb=1024)
    elapsed = time.monotonic() - started
    if name == "canonical" or name.startswith("also_correct"):
        assert result.passed and result.verdict == "passed", result.failed_test
        assert result.tests_run == result.tests_total == len(problem.tests)
    elif name == "hang":
        assert not result.passed and result.verdict == "time_limit", result.failed_test
        assert result.failed_test["index"] == 0 and result.tests_run == 1
        assert elapsed < HANG_S + 10, f"a hanging program held the grader for {elapsed:.1f} s"
    else:
        verdict, public = _EXPECTED_FAILURES[(qid, name)]
        assert not result.passed and result.verdict == verdict, result.failed_test
        assert result.failed_test["public"] is public


def test_both_styles_have_pass_fail_and_hang_programs():
    """The matrix above covers what the issue asks for, for stdin and functional problems alike."""
    problems = problems_by_id()
    for style in ("stdin", "functional"):
        names = {n for q, n in SOLUTIONS if problems[str(q)].style == style}
        assert {"canonical", "hang"} <= names and any(n.startswith("wrong") for n in names), style


def test_no_code_scores_zero_without_running():
    problem = problems_by_id()["lcbfix_sum_max"]
    result = grade(problem, "  \n", timeout_s=RUN_S, memory_mb=1024)
    assert (result.passed, result.verdict, result.tests_run) == (False, "no_code", 0)


def test_memory_limit_is_enforced():
    problem = problems_by_id()["lcbfix_sum_max"]
    hog = "n = int(input())\nblock = bytearray(1 << 30)\nprint(len(block))\nprint(1)\n"
    result = grade(problem, hog, timeout_s=RUN_S, memory_mb=256)
    assert not result.passed and result.verdict == "runtime_error", result.failed_test
    assert result.failed_test["detail"].startswith("memory"), result.failed_test


def test_sandbox_refusals_fail_the_program():
    """What the sandbox forbids (here: the network) is a failed test, not a grader crash."""
    problem = problems_by_id()["3901"]
    code = ("import socket\n\nclass Solution:\n    def rotateRight(self, nums, k):\n"
            "        socket.create_connection(('127.0.0.1', 9))\n        return nums\n")
    result = grade(problem, code, timeout_s=RUN_S, memory_mb=1024)
    assert result.verdict == "runtime_error" and "forbidden" in result.failed_test["detail"], result.failed_test


def test_stored_program_output_is_bounded():
    """A program that prints a file or floods its output leaves at most KEPT_OUTPUT_CHARS in the results."""
    from harness.sandbox.api import KEPT_OUTPUT_CHARS

    problem = problems_by_id()["lcbfix_sum_max"]
    for code, verdict in (("print('x' * 1_000_000)\n", "wrong_answer"),
                          ("import sys\nsys.stderr.write('e' * 10**6)\nraise ValueError('boom')\n", "runtime_error")):
        result = grade(problem, code, timeout_s=RUN_S, memory_mb=1024)
        assert result.verdict == verdict, result.failed_test
        assert len(json.dumps(result.failed_test)) < KEPT_OUTPUT_CHARS, len(json.dumps(result.failed_test))


# -- the coding category score ---------------------------------------------------------
def _result(task: str, score: float, category: str = "coding") -> TaskResult:
    return TaskResult(task=task, category=category, score=score)


def test_coding_score_with_and_without_livecodebench():
    he, mbpp, lcb = _result("humaneval_plus", 0.8), _result("mbpp_plus", 0.6), _result("livecodebench", 0.3)
    without = category_score("coding", [he, mbpp, _result("gsm8k", 0.9, "math")])
    assert without.value == pytest.approx(0.7) and without.tasks == ["humaneval_plus", "mbpp_plus"]
    assert without.definition.startswith("EvalPlus avg")
    both = category_score("coding", [he, mbpp, lcb])
    assert both.value == pytest.approx((0.7 + 0.3) / 2)  # not the mean of three tasks (0.5667)
    assert both.definition == "mean(EvalPlus avg, LiveCodeBench)"
    assert both.tasks == ["humaneval_plus", "livecodebench", "mbpp_plus"] and both.missing == []
    not_run = TaskResult(task="livecodebench", category="coding", status="not_run", reason="offline")
    partial = category_score("coding", [he, mbpp, not_run])
    assert partial.value == pytest.approx(0.7) and partial.missing == ["livecodebench"]
    alone = category_score("coding", [lcb])
    assert alone.value == pytest.approx(0.3)


def test_coding_score_reproduces_the_papers_code_avg():
    """Code Avg = (EvalPlus + LiveCodeBench) / 2 on every row of the paper's large-scale table."""
    rows = list(csv.DictReader(PAPER_TABLE.open()))
    assert len(rows) >= 10
    for row in rows:
        evalplus, lcb = float(row["evalplus"]), float(row["livecodebench"])
        results = [_result("humaneval_plus", evalplus), _result("mbpp_plus", evalplus), _result("livecodebench", lcb)]
        score = category_score("coding", results)
        assert score.value == pytest.approx(float(row["code_avg"]), abs=0.0006), row


# -- end to end against a served tiny model ------------------------------------------------
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def served(served_tiny):
    return served_tiny.server, served_tiny.model_dir


def test_end_to_end_against_a_served_model(served, tmp_path):
    server, model_dir = served
    endpoint = Endpoint(base_url=server.base_url, model="tiny", tokenizer=str(model_dir))
    harness_settings = GenerationSettings(concurrency=1)  # greedy, 512 tokens: LCB's options override both
    ctx = TaskContext(endpoint=endpoint, generation=harness_settings, limit=3, data_dir=FIXTURES,
                      work_dir=tmp_path, progress=False)
    task = fixture_task(max_tokens=MAX_TOKENS, timeout_s=RUN_S)
    result = task.run(ctx)
    assert TaskResult.model_validate_json(result.model_dump_json()) == result  # records round-trip as JSON

    assert (result.task, result.category, result.status, result.n_samples) == ("livecodebench", "coding", "ok", 3)
    problems = problems_by_id()
    assert [s.sample_id for s in result.samples] == IN_DEFAULT_WINDOW[:3]
    for sample in result.samples:
        problem = problems[sample.sample_id]
        assert sample.prompt == conversation(problem)
        assert isinstance(sample.output, str) and sample.completion_tokens <= MAX_TOKENS
        assert sample.extracted == extract_code(sample.output)
        # Grading again, independently of the run, gives the recorded verdict.
        again = grade(problem, sample.extracted, timeout_s=RUN_S, memory_mb=1024)
        assert (sample.score, sample.verdict) == (float(again.passed), again.verdict)
        # The recorded output is what the server gives for the recorded prompt with LCB's sampling.
        body = {"model": "tiny", "messages": sample.prompt, "temperature": 0.2, "top_p": 0.95,
                "max_tokens": MAX_TOKENS, "seed": 0, "chat_template_kwargs": {"enable_thinking": False}}
        reply = requests.post(f"{server.base_url}/chat/completions", json=body, timeout=120).json()
        assert reply["choices"][0]["message"]["content"] == sample.output
    assert result.score == pytest.approx(sum(s.score for s in result.samples) / 3)
    assert result.metrics["pass@1"] == result.score and result.metrics["n_problems"] == 3

    prov = result.provenance
    assert prov["dataset"] == {
        "hf_repo": "livecodebench/code_generation_lite", "release_version": "v5_v6",
        "files": ["test5.jsonl", "test6.jsonl"], "source": "local", "revision": "local copy",
        "date_window": ["2025-01-01", "2025-07-31"], "n_problems_in_release": 6, "n_problems_in_window": 4,
        "contest_dates_in_window": ["2025-01-25", "2025-07-31"],
    }
    assert set(prov["data_sha256"]) == {"test5.jsonl", "test6.jsonl"}
    assert (prov["generation"]["temperature"], prov["generation"]["top_p"]) == (0.2, 0.95)
    assert prov["generation"]["max_tokens"] == MAX_TOKENS
    assert prov["generation_overrides"]["temperature"] == {"harness": 0.0, "livecodebench": 0.2}
    assert prov["options"]["start_date"] == "2025-01-01" and prov["limit"] == 3
    assert prov["chat_template_sha256"] and prov["endpoint_model"] == "tiny"
    assert prov["execution"]["timeout_s_per_test"] == RUN_S and prov["execution"]["sandbox_isolation"]["audit_hook"]
    json.dumps(prov)
