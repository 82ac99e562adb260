"""The toy task suite: scorers, the rubric judge endpoint, and the trained model served by vLLM.

The served checks compare the tasks (vLLM + lm-eval + judge endpoint) against an
independent in-process evaluation of the same checkpoint (HF greedy generation and
log-likelihoods), and require the trained model to beat chance by a wide margin.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from harness.tasks import get_task_class
from harness.tasks.base import Endpoint, GenerationSettings, TaskContext, TaskError
from harness.tasks.judge import parse_judge_score
from harness.tasks.rubric_judge import RubricJudge, build_judge_prompt, rubric
from harness.tasks.toy import extract_code, extract_number, score_coding, score_math

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "toy-moe"
LIMIT = 40
CONSTRAINTS = {"sentences": 3, "character": "Mira", "words": ["lantern", "river"]}


# -- scorers ------------------------------------------------------------------------------
def test_extract_number():
    assert extract_number("7 + 5 = 12. The answer is 12.") == 12
    assert extract_number("The answer is -3, not 4") == -3
    assert extract_number("so 4 + 4 = 8") == 8
    assert extract_number("no digits") is None
    assert score_math("3 * 4 = 12. The answer is 13.", 12) == (13, 0.0)


def test_extract_code():
    assert extract_code("```python\ndef f(x):\n    return x\n```\ntrailing") == "def f(x):\n    return x\n"
    assert extract_code("def f(x):\n    return x") == "def f(x):\n    return x"
    assert extract_code("```python\ndef f(x):\n    return x") == "def f(x):\n    return x"  # unclosed fence


def test_coding_scores_in_the_sandbox_and_keeps_a_bounded_error():
    from harness.sandbox.api import KEPT_OUTPUT_CHARS

    item = {"tests": ["assert double(2) == 4"]}
    flood = "```python\nimport sys\nsys.stderr.write('e' * 1_000_000)\ndef double(x):\n    return x\n```"
    (good_code, good, good_detail), (_, bad, detail) = score_coding(
        ["```python\ndef double(x):\n    return 2 * x\n```", flood], [item, item])
    assert (good, good_detail) == (1.0, "") and "return 2 * x" in good_code
    assert bad == 0.0 and "AssertionError" in detail and len(detail) <= KEPT_OUTPUT_CHARS + 50


@pytest.mark.parametrize(("story", "score"), [
    ("Mira walked to the river. She held a lantern. Then Mira went home.", 10.0),
    ("Orin walked to the river. He held a lantern. Then he went home.", 1 + 9 * 3 / 4),  # no character
    ("Mira walked to the river. She sat down. Then Mira went home.", 1 + 9 * 3.5 / 4),  # one word missing
    ("Mira walked to the river with a lantern. Then Mira went home.", 1 + 9 * 3 / 4),  # 2 sentences
    ("Mira river lantern.", 1 + 9 * 2 / 4),  # 1 sentence of 3 words: count and length fail
    ("", 1.0 + 9 * 0 / 4),
])
def test_rubric(story, score):
    assert rubric(story, CONSTRAINTS)["score"] == pytest.approx(score, abs=1e-3)


def test_rubric_judge_endpoint_speaks_openai_and_wildbench_format():
    story = "Mira walked to the river. She sat down. Then Mira went home."
    with RubricJudge() as judge:
        models = requests.get(f"{judge.base_url}/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["rubric-judge"]
        reply = requests.post(f"{judge.base_url}/chat/completions", timeout=10, json={
            "model": "rubric-judge", "messages": [{"role": "user", "content": build_judge_prompt(story, CONSTRAINTS)}],
        })
        assert reply.status_code == 200
        text = reply.json()["choices"][0]["message"]["content"]
        assert parse_judge_score(text) == pytest.approx(rubric(story, CONSTRAINTS)["score"])
        assert "lantern" in json.loads(text)["weaknesses"]
        bad = requests.post(f"{judge.base_url}/chat/completions", timeout=10,
                            json={"model": "x", "messages": [{"role": "user", "content": "rate this"}]})
        assert bad.status_code == 400 and "Constraints" in bad.json()["error"]["message"]


def test_missing_data_file_is_a_clear_error(tmp_path):
    task = get_task_class("toy_math")({"data_file": str(tmp_path / "nope.jsonl")})
    ctx = TaskContext(endpoint=Endpoint(base_url="http://127.0.0.1:9/v1", model="m"))
    assert "not found" in task.check_ready(ctx)[0]
    with pytest.raises(TaskError, match="nope.jsonl"):
        task.run(ctx)


# -- the trained model, served --------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from harness.serving.vllm import VLLMServer

    if not (MODEL / "model.safetensors").is_file():
        pytest.fail(f"{MODEL} has no checkpoint: train it (see models/toy-moe/TRAINING.md)")
    log = tmp_path_factory.mktemp("toy_vllm") / "server.log"
    with VLLMServer(MODEL, served_model_name="toy-moe", dtype="float32", max_model_len=512, log_path=log) as server:
        yield Endpoint(base_url=server.base_url, model="toy-moe", tokenizer=str(MODEL))


@pytest.fixture(scope="module")
def local_model():
    from harness.standins.toy.evaluate import load

    return load(MODEL)


def _ctx(endpoint: Endpoint, tmp_path: Path, limit: int | None = LIMIT) -> TaskContext:
    return TaskContext(endpoint=endpoint, generation=GenerationSettings(max_tokens=96, concurrency=8),
                       limit=limit, work_dir=tmp_path, progress=False)


def _local(local_model, domain: str, limit: int | None = LIMIT) -> dict:
    from harness.standins.toy.corpus import read_eval_items
    from harness.standins.toy.evaluate import evaluate_domain

    model, tokenizer = local_model
    return evaluate_domain(model, tokenizer, domain, read_eval_items(MODEL / "data" / f"{domain}.jsonl")[:limit])


# Math on all 200 items: its accuracy (0.67) is the closest to the 0.6 floor, so 40 items would be too few.
@pytest.mark.parametrize(("task_name", "domain", "floor", "limit"), [
    ("toy_math", "math", 0.6, None), ("toy_coding", "coding", 0.6, LIMIT), ("toy_creative", "creative", 0.6, LIMIT),
])
def test_generation_tasks_score_well_and_match_in_process_scoring(served, local_model, tmp_path, task_name, domain,
                                                                 floor, limit):
    result = get_task_class(task_name)().run(_ctx(served, tmp_path, limit))
    local = _local(local_model, domain, limit)
    assert result.status == "ok" and result.n_samples == len(local["scores"])
    assert result.score >= floor, (task_name, result.score, [s.output for s in result.samples[:5]])
    # vLLM (float32) and HF greedy decoding agree on nearly every item; scores per item too.
    same = sum(s.output.strip() == o.strip() for s, o in zip(result.samples, local["outputs"], strict=True))
    assert same >= 0.9 * result.n_samples, (task_name, same)
    assert result.score == pytest.approx(local["score"], abs=0.05)


def test_mc_task_loglikelihoods_match_the_model(served, local_model, tmp_path):
    from harness.standins.toy.corpus import read_eval_items
    from harness.standins.toy.evaluate import choice_logliks

    result = get_task_class("toy_mc")().run(_ctx(served, tmp_path))
    assert result.n_samples == LIMIT and result.provenance["chance"] == 0.25
    assert result.score >= 0.6, result.score
    model, tokenizer = local_model
    items = read_eval_items(MODEL / "data" / "mc.jsonl")[:LIMIT]
    by_id = {int(s.doc_id): s for s in result.samples}
    for i, item in enumerate(items[:10]):
        record = by_id[i]
        assert record.target == item["gold"]
        expected = choice_logliks(model, tokenizer, item["context"], [" " + c for c in item["choices"]])
        assert record.loglikelihoods == pytest.approx(expected, abs=2e-3)
    assert result.score == pytest.approx(_local(local_model, "mc")["score"], abs=0.05)
