"""HumanEval+ / MBPP+: prompts and answer extraction as evalplus does them, evalplus's scoring in our sandbox.

References: evalplus's own sanitizer and OpenAI-chat request builder (installed), the
datasets' canonical solutions (must pass), empty and raising answers (must fail), and
hostile answers (must fail without touching anything outside the sandbox).
"""

from __future__ import annotations

import json
import random
import re
import socket
from importlib.metadata import version
from pathlib import Path

import pytest

from harness.tasks.base import GenerationSettings, TaskContext, file_sha256
from harness.tasks.coding import (
    HUMANEVAL_PLUS,
    INSTRUCTION_PREFIX,
    MBPP_PLUS,
    SYSTEM_PROMPT,
    HumanEvalPlus,
    MbppPlus,
    chat_messages,
    load_problems,
    pass_at_1,
    sanitize,
    score_solutions,
)
from tests.conftest import DATASETS

FIXTURES = Path(__file__).parents[1] / "fixtures" / "coding"
SUBSET = 40  # problems per dataset for canonical solutions in the default suite (all of them under -m slow)
FAILING_SUBSET = 10  # problems per dataset for answers that must all fail


@pytest.fixture(scope="module")
def problems():
    return {data.name: load_problems(data, DATASETS) for data in (HUMANEVAL_PLUS, MBPP_PLUS)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """Ground-truth cache shared by the module's tests (computed once per problem)."""
    return tmp_path_factory.mktemp("evalplus_cache")


def _subset(problems, n: int | None, seed: int = 0) -> list[str]:
    ids = list(problems.items)
    return ids if n is None else sorted(random.Random(seed).sample(ids, n))


def _canonical(problems, ids):
    return {t: problems.items[t]["prompt"] + problems.items[t]["canonical_solution"] for t in ids}


# -- data ----------------------------------------------------------------------------------------
def test_offline_data_has_evalplus_hashes(problems):
    he, mbpp = problems["humaneval"], problems["mbpp"]
    # evalplus's dataset hashes of these releases (md5 of the uncompressed file; datasets README)
    assert (len(he.items), he.md5) == (164, "fe585eb4df8c88d844eeb463ea4d0302")
    assert (len(mbpp.items), mbpp.md5) == (378, "ee43ecabebf20deef4bb776a405ac5b1")
    # MBPP inputs are deserialised as evalplus does (Mbpp/2 takes tuples, not lists)
    assert all(isinstance(arg, tuple) for arg in mbpp.items["Mbpp/2"]["base_input"][0])


# -- prompt and extraction vs evalplus -------------------------------------------------------------
def test_chat_request_matches_evalplus_openai_backend(problems, monkeypatch):
    import inspect

    import evalplus.codegen
    from evalplus.gen.util import openai_request
    from evalplus.provider import openai as provider

    assert repr(INSTRUCTION_PREFIX)[1:-1] in inspect.getsource(evalplus.codegen.run_codegen).replace('"', "'")
    sent = {}

    class FakeCompletions:
        def create(self, **kwargs):
            sent.update(kwargs)
            return type("R", (), {"choices": []})()

    fake_client = type("C", (), {"chat": type("Ch", (), {"completions": FakeCompletions()})()})()
    monkeypatch.setattr(provider.openai_request, "make_auto_request",
                        lambda client, **kw: openai_request.make_request(fake_client, **kw))
    decoder = provider.OpenAIChatDecoder("m", base_url="http://127.0.0.1:9/v1", instruction_prefix=INSTRUCTION_PREFIX,
                                         response_prefix="unused", temperature=0.0)
    for task_id in ("HumanEval/0", "Mbpp/2"):
        prompt = problems["humaneval" if task_id.startswith("Human") else "mbpp"].items[task_id]["prompt"]
        decoder.codegen(prompt.strip() + "\n", do_sample=False, num_samples=1)  # as evalplus.codegen calls it
        assert sent["messages"] == chat_messages(prompt)
    assert sent["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert chat_messages("p", system_prompt=None)[0]["role"] == "user"


def _replies(problems) -> list[tuple[str, str]]:
    cases = [tuple(c) for c in json.loads((FIXTURES / "replies.json").read_text())]
    for data in problems.values():
        for task_id in _subset(data, 25, seed=1):
            p = data.items[task_id]
            code, entry = p["prompt"] + p["canonical_solution"], p["entry_point"]
            cases += [(f"Here you go:\n```python\n{code}\n```\nIt works.", entry),
                      (f"```python\nimport sys\n\ndef unused():\n    return 1\n\n{code}\n\n"
                       f"if __name__ == '__main__':\n    print({entry})\n```", entry)]
    return cases


def test_sanitize_matches_evalplus(problems):
    from evalplus.sanitize import sanitize as evalplus_sanitize

    cases = _replies(problems)
    differ = [(text, entry) for text, entry in cases
              if sanitize(text, entry) != evalplus_sanitize(text, entrypoint=entry)]
    assert not differ, differ[:3]
    assert len(cases) > 100


# -- scoring ---------------------------------------------------------------------------------------
def _check_canonical(problems, cache, n):
    for data in problems.values():
        ids = _subset(data, n)
        scores = score_solutions(data, _canonical(data, ids), cache, workers=2)
        metrics = pass_at_1(scores)
        failed = {t: (s.base, s.plus) for t, s in scores.items() if not s.plus_pass}
        print(f"\n{data.data.release}: {len(ids)} canonical solutions, base pass@1 {metrics['base_pass@1']:.4f}, "
              f"plus pass@1 {metrics['plus_pass@1']:.4f}, not passing: {sorted(failed)}")  # shown with -s
        assert metrics["base_pass@1"] >= 0.99 and metrics["plus_pass@1"] >= 0.99, (data.data.name, failed)


def test_canonical_solutions_pass_on_a_subset(problems, cache):
    _check_canonical(problems, cache, SUBSET)


@pytest.mark.slow
def test_canonical_solutions_pass_on_all_problems(problems, cache):
    _check_canonical(problems, cache, None)


def test_empty_and_raising_answers_score_zero(problems, cache):
    for data in problems.values():
        ids = _subset(data, FAILING_SUBSET)
        empty = pass_at_1(score_solutions(data, {t: "" for t in ids}, cache, workers=2))
        raising = {t: f"def {data.items[t]['entry_point']}(*args, **kwargs):\n    raise RuntimeError\n" for t in ids}
        assert empty == {"base_pass@1": 0.0, "plus_pass@1": 0.0}
        assert pass_at_1(score_solutions(data, raising, cache, workers=2)) == empty
        # the unchanged extraction of the empty reply is the empty program
        assert sanitize("", data.items[ids[0]]["entry_point"]) == ""


# Mbpp/793 `last(arr, x)`: 3 base inputs and no plus inputs, so a run that escapes evalplus's
# per-input alarm is ended by the sandbox within seconds.
HOSTILE = {
    "infinite loop": ("def last(arr, x):\n    while True:\n        pass\n", None),
    "loop that disables evalplus's alarm": (
        "import signal\ndef last(arr, x):\n    signal.setitimer(signal.ITIMER_REAL, 0)\n    while True:\n"
        "        pass\n", "timeout"),
    "fork loop (past evalplus's guard)": ("import posix\ndef last(arr, x):\n    while True:\n        posix.fork()\n",
                                          "forbidden: process creation"),
    "huge allocation": ("def last(arr, x):\n    return len(bytearray(64 * 1024 ** 3))\n", None),
    "delete outside (past evalplus's guard)": ("import posix\ndef last(arr, x):\n    posix.unlink({victim!r})\n"
                                               "    return 0\n", "forbidden: os.remove"),
    "overwrite outside with io.open": ("import io\ndef last(arr, x):\n    io.open({victim!r}, 'w').write('gone')\n"
                                       "    return 0\n", "forbidden: write outside"),
    "socket at import time": ("import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                              "def last(arr, x):\n    return len(arr) - arr[::-1].index(x) - 1\n",
                              "forbidden: network"),
    "exit the checker": ("import os\nos._exit(0)\n", None),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_solutions_fail_in_the_scoring_sandbox(problems, cache, tmp_path, name):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    try:
        template, expected_failure = HOSTILE[name]
        code = template.format(victim=str(victim), port=server.getsockname()[1])
        score = score_solutions(problems["mbpp"], {"Mbpp/793": code}, cache, workers=2)["Mbpp/793"]
        assert not score.base_pass and not score.plus_pass
        if expected_failure:
            assert score.base.sandbox_failure.startswith(expected_failure), score.base
        assert victim.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()
    # the same problem's canonical solution still passes (the hostile runs left nothing behind)
    canonical = score_solutions(problems["mbpp"], _canonical(problems["mbpp"], ["Mbpp/793"]), cache)
    assert canonical["Mbpp/793"].plus_pass


def _in_thread_pool(problem: dict, workers: int = 8) -> str:
    """The canonical solution, run by its entry point in a ThreadPoolExecutor (one task per call)."""
    entry = problem["entry_point"]
    code = re.sub(rf"\b{entry}\b", f"_{entry}_serial", problem["prompt"] + problem["canonical_solution"])
    return (f"from concurrent.futures import ThreadPoolExecutor\n\n{code}\n\n"
            f"def {entry}(*args):\n    with ThreadPoolExecutor(max_workers={workers}) as pool:\n"
            f"        return pool.submit(_{entry}_serial, *args).result()\n")


def test_a_solution_computing_in_a_thread_pool_passes_and_a_fork_is_still_refused(problems, cache):
    data = problems["humaneval"]
    ids = ["HumanEval/0", "HumanEval/13"]
    pooled = score_solutions(data, {t: _in_thread_pool(data.items[t]) for t in ids}, cache, workers=2)
    assert all(s.base_pass and s.plus_pass for s in pooled.values()), pooled
    # a pool of 32 workers busy at once (ThreadPoolExecutor's largest default) fits the thread budget
    entry = data.items["HumanEval/13"]["entry_point"]
    wide = (f"from concurrent.futures import ThreadPoolExecutor\nimport threading, time\n\n"
            f"def {entry}(a, b):\n    barrier = threading.Barrier(32, timeout=5)\n"
            f"    with ThreadPoolExecutor(max_workers=32) as pool:\n"
            f"        list(pool.map(lambda _: barrier.wait(), range(32)))\n"
            f"    while b:\n        a, b = b, a % b\n    return a\n")
    assert score_solutions(data, {"HumanEval/13": wide}, cache)["HumanEval/13"].plus_pass
    # not unbounded: 200 threads at once are refused, and so is a fork from a thread (past evalplus's guard)
    many = (f"import threading, time\n\ndef {entry}(a, b):\n"
            f"    threads = [threading.Thread(target=time.sleep, args=(0.5,)) for _ in range(200)]\n"
            f"    for t in threads:\n        t.start()\n    return 1\n")
    assert not score_solutions(data, {"HumanEval/13": many}, cache)["HumanEval/13"].base_pass
    forking = (f"import posix\nfrom concurrent.futures import ThreadPoolExecutor\n\ndef {entry}(a, b):\n"
               f"    with ThreadPoolExecutor(2) as pool:\n        pool.submit(posix.fork).result()\n    return 1\n")
    forked = score_solutions(data, {"HumanEval/13": forking}, cache)["HumanEval/13"]
    assert not forked.base_pass and forked.base.sandbox_failure.startswith("forbidden: process creation (os.fork)")


# -- served end to end -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(served_tiny):
    return served_tiny.endpoint


@pytest.mark.parametrize("task_cls", [HumanEvalPlus, MbppPlus])
def test_served_run_records_samples_and_provenance(served, problems, tmp_path, task_cls):
    settings = GenerationSettings(max_tokens=32)
    ctx = TaskContext(endpoint=served, generation=settings, limit=3, data_dir=DATASETS, work_dir=tmp_path,
                      progress=False)
    result = task_cls().run(ctx)
    data = problems[task_cls.data.name]
    ids = list(data.items)[:3]
    assert result.status == "ok" and result.category == "coding" and result.n_samples == 3
    assert [s.sample_id for s in result.samples] == ids
    for sample, task_id in zip(result.samples, ids, strict=True):
        assert sample.prompt == chat_messages(data.items[task_id]["prompt"])
        assert isinstance(sample.output, str) and 1 <= sample.completion_tokens <= 32
        assert sample.extracted == sanitize(sample.output, data.items[task_id]["entry_point"])
        assert sample.base_status in ("pass", "fail", "timeout") and sample.plus_status in ("pass", "fail", "timeout")
        both = sample.base_status == sample.plus_status == "pass"
        assert sample.score == ((sample.base_status == "pass") + both) / 2
    base = sum(s.base_status == "pass" for s in result.samples) / 3
    plus = sum(s.base_status == s.plus_status == "pass" for s in result.samples) / 3
    assert result.metrics == {"base_pass@1": base, "plus_pass@1": plus}
    assert result.score == pytest.approx((base + plus) / 2)
    # Re-scoring the recorded extractions independently gives the same statuses.
    again = score_solutions(data, {s.sample_id: s.extracted for s in result.samples}, tmp_path / "evalplus")
    assert [(again[s.sample_id].base.status, again[s.sample_id].plus.status) for s in result.samples] == \
        [(s.base_status, s.plus_status) for s in result.samples]

    prov = result.provenance
    data_file = DATASETS / task_cls.data.offline
    assert prov["data_sha256"] == {data_file.name: file_sha256(data_file)}
    assert prov["dataset_md5"] == data.md5 and prov["evalplus_version"] == version("evalplus")
    assert prov["generation"] == settings.recorded() and prov["limit"] == 3
    assert prov["chat_template_sha256"] and prov["sandbox_isolation"]["audit_hook"]
    assert (tmp_path / "evalplus" / f"{task_cls.data.name}-{data.md5}" / "times.json").is_file()
