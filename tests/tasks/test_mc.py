"""Multiple-choice tasks (lm-eval local-completions): YAMLs, sample choice, scoring, and real served models.

Three layers, each checked against something independent:
- the generated local task YAMLs load the offline files with lm-eval's built-in prompts
  (compared with prompts and gold answers built here from the raw JSON rows);
- a fake completions server whose log-probabilities are a known function of the token
  ids: every per-choice log-likelihood, chosen index, gold index, score and metric is
  recomputed here from the raw data and that function;
- one vLLM server (tiny qwen3_moe, float32) for the whole module: every MC task runs on
  20 samples and the served log-likelihoods equal transformers' on the same token ids.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from harness.tasks import get_task_class
from harness.tasks.base import Endpoint, GenerationSettings, TaskContext, TaskError, TaskResult
from harness.tasks.categories import category_score
from harness.tasks.mc import (
    MMLU_SUBJECTS,
    MMLU_TEST_SIZES,
    SPECS,
    group_yaml,
    lm_eval_tasks_dir,
    mmlu_selection,
    write_yamls,
)
from harness.tasks.rubric_judge import JsonHandler
from tests.conftest import DATASETS

MC_TASKS = ("arc_challenge", "arc_easy", "boolq", "hellaswag", "mmlu", "openbookqa", "rte", "winogrande")
NOWHERE = Endpoint(base_url="http://127.0.0.1:9/v1", model="none", tokenizer="unused")


def read_rows(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def run_task(name: str, endpoint: Endpoint, limit: int | None, work: Path, options: dict | None = None,
             data_dir: Path | None = DATASETS):
    ctx = TaskContext(endpoint=endpoint, limit=limit, data_dir=data_dir, work_dir=work,
                      generation=GenerationSettings(concurrency=4))
    return get_task_class(name)(options).run(ctx)


# -- expected prompts, choices and gold answers, built from the raw rows ---------------------
def expected_doc(task: str, row: dict) -> tuple[str | list[str], list[str], int]:
    """(prompt or per-choice contexts, continuations, gold index) for one raw row, 0-shot."""
    if task in ("arc_easy", "arc_challenge"):
        return (f"Question: {row['question']}\nAnswer:", [" " + t for t in row["choices"]["text"]],
                row["choices"]["label"].index(row["answerKey"]))
    if task == "openbookqa":
        return (row["question_stem"], [" " + t for t in row["choices"]["text"]],
                row["choices"]["label"].index(row["answerKey"]))
    if task == "boolq":
        return f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", [" no", " yes"], int(row["label"])
    if task == "winogrande":
        cut = row["sentence"].index("_")
        rest = " " + row["sentence"][cut + 1:].strip()
        return ([row["sentence"][:cut] + row["option1"], row["sentence"][:cut] + row["option2"]],
                [rest, rest], int(row["answer"]) - 1)
    if task == "mmlu":
        subject = row["subject"]
        letters = "ABCD"
        body = "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(row["choices"]))
        description = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}."
        return (f"{description}\n\n{row['question'].strip()}\n{body}\nAnswer:", [" A", " B", " C", " D"],
                int(row["answer"]))
    raise KeyError(task)


def raw_row(task: str, sample) -> dict:
    if task == "mmlu":
        return read_rows(DATASETS / "mc" / "mmlu" / sample.subject / "test.jsonl")[sample.doc_id]
    return read_rows(DATASETS / SPECS[task].data_file)[sample.doc_id]


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation token ids: trailing spaces move to the continuation, the whole is encoded once."""
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    whole = tokenizer(stripped + continuation, add_special_tokens=False).input_ids
    context_ids = tokenizer(stripped, add_special_tokens=False).input_ids
    return context_ids, whole[len(context_ids):]


# -- no server: data, sampling, YAMLs, rte ----------------------------------------------------
def test_mmlu_sizes_and_subjects_match_the_files_and_lm_eval():
    builtin = {p.stem.removeprefix("mmlu_") for p in (lm_eval_tasks_dir() / "mmlu" / "default").glob("mmlu_*.yaml")}
    assert set(MMLU_SUBJECTS) == builtin and len(MMLU_SUBJECTS) == 57
    for subject in MMLU_SUBJECTS:
        assert len(read_rows(DATASETS / "mc" / "mmlu" / subject / "test.jsonl")) == MMLU_TEST_SIZES[subject], subject
    assert sum(MMLU_TEST_SIZES.values()) == 14042


@pytest.mark.parametrize("limit", [1, 20, 57, 100, 1000])
def test_mmlu_limit_counts_questions_in_total_in_proportion_to_subject_size(limit):
    picked = mmlu_selection(limit)
    total = sum(MMLU_TEST_SIZES.values())
    assert sum(len(rows) for rows in picked.values()) == limit
    for subject, rows in picked.items():
        assert rows == sorted(set(rows)) and 0 <= rows[0] and rows[-1] < MMLU_TEST_SIZES[subject]
        assert rows, subject
    for subject in MMLU_SUBJECTS:  # systematic sampling: each subject within one question of its share
        assert abs(len(picked.get(subject, [])) - limit * MMLU_TEST_SIZES[subject] / total) < 1 + 1e-9, subject


def test_mmlu_limit_scopes_and_no_limit():
    everything = mmlu_selection(None)
    assert {s: len(r) for s, r in everything.items()} == MMLU_TEST_SIZES
    assert mmlu_selection(10**6) == everything
    per_subject = mmlu_selection(3, "per_subject")
    assert per_subject == {s: [0, 1, 2] for s in MMLU_SUBJECTS}
    with pytest.raises(ValueError, match="limit"):
        mmlu_selection(0)


@pytest.mark.parametrize("task", ["arc_challenge", "arc_easy", "boolq", "hellaswag", "openbookqa", "winogrande",
                                  "mmlu"])
def test_local_yamls_load_the_offline_files_with_builtin_prompts(task, tmp_path):
    from lm_eval.tasks import TaskManager

    ctx = TaskContext(endpoint=NOWHERE, limit=3, data_dir=DATASETS, work_dir=tmp_path)
    plan = get_task_class(task)().plan(ctx, tmp_path / "cache")
    write_yamls(tmp_path / "yamls", plan.configs)
    for config in plan.configs.values():  # absolute includes into the installed lm-eval, local data only
        if "include" in config:
            assert Path(config["include"]).is_absolute() and Path(config["include"]).is_file()
            assert config["dataset_path"] == "json" and config["training_split"] is None
            assert all(Path(p).is_absolute() and Path(p).is_file()
                       for p in config["dataset_kwargs"]["data_files"].values())
    loaded = TaskManager(include_path=str(tmp_path / "yamls"), include_defaults=False).load([plan.target])
    if task == "mmlu":
        assert plan.target == "mmlu_local" and plan.samples is not None
        assert set(loaded["tasks"]) == set(plan.samples) and len(loaded["tasks"]) == 3
        subject_task = sorted(loaded["tasks"])[0]
        subject = subject_task.removeprefix("mmlu_").removesuffix("_local")
        checks = [(loaded["tasks"][subject_task], DATASETS / "mc" / "mmlu" / subject / "test.jsonl")]
    else:
        assert set(loaded["tasks"]) == {f"{task}_local"} and plan.limit == 3
        checks = [(loaded["tasks"][f"{task}_local"], DATASETS / SPECS[task].data_file)]
    assert any((tmp_path / "cache").iterdir()), "the json builder cache belongs under the work dir"
    for lm_task, path in checks:
        rows = read_rows(path)
        docs = list(lm_task.eval_docs)
        assert len(docs) == len(rows)
        for doc, row in list(zip(docs, rows, strict=True))[:3]:
            prompt, continuations, gold = expected_doc(task, row) if task != "hellaswag" else (None, None, None)
            choices = lm_task.doc_to_choice(doc)
            if task == "hellaswag":
                assert len(choices) == 4 and lm_task.doc_to_target(doc) == int(row["label"])
                assert lm_task.doc_to_text(doc).startswith(row["activity_label"] + ": ")
            elif task == "winogrande":
                assert choices == prompt and lm_task.doc_to_text(doc) == gold
            else:
                text = lm_task.doc_to_text(doc)
                assert prompt.endswith(text) and [" " + c for c in choices] == continuations
                assert lm_task.doc_to_target(doc) == gold
            if task == "mmlu":
                assert lm_task.config.description + lm_task.doc_to_text(doc) == prompt


def test_hub_mode_yamls_only_include_the_builtin_tasks(tmp_path):
    ctx = TaskContext(endpoint=NOWHERE, limit=2, data_dir=None)
    plan = get_task_class("arc_easy")().plan(ctx, tmp_path)
    assert plan.target == "arc_easy" and plan.limit == 2
    assert plan.configs == {"arc_easy": {"include": str(lm_eval_tasks_dir() / "arc" / "arc_easy.yaml"), "tag": []}}
    plan = get_task_class("mmlu")().plan(ctx, tmp_path)
    assert plan.target == "mmlu_hub" and set(plan.samples) == {n for n in plan.configs if not n.startswith("_")}
    assert plan.configs["_mmlu_hub"] == group_yaml("mmlu_hub", list(plan.samples))


def test_rte_offline_is_reported_not_run_and_named_missing_in_the_category(tmp_path):
    result = run_task("rte", NOWHERE, 20, tmp_path)
    assert result.status == "not_run" and result.score is None and result.samples == []
    assert "licence" in result.reason and str(DATASETS / "mc" / "rte" / "validation.jsonl") in result.reason
    assert result.category == "mc" and result.provenance["task"] == "rte"
    other = TaskResult(task="arc_easy", category="mc", score=0.5)
    score = category_score("mc", [other, result])
    assert score.value == 0.5 and score.missing == ["rte"]


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    endpoint = Endpoint(base_url="http://127.0.0.1:9/v1", model="none")
    with pytest.raises(TaskError, match="tokenizer"):
        run_task("arc_easy", endpoint, 2, tmp_path)


# -- a fake server with known log-probabilities -----------------------------------------------
def fake_logprob(previous: int, token: int) -> float:
    return -((previous * 7919 + token * 104729) % 997) / 97.0 - 0.01


class FakeCompletions(JsonHandler):
    """/v1/completions with echo + logprobs, log p(token | previous) = fake_logprob; /v1/models."""

    def do_GET(self) -> None:
        self._send(200, {"data": [{"id": "fake", "max_model_len": 4096}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if isinstance(body["prompt"], str):  # the task's preflight request: tokenize by characters
            body["prompt"] = [ord(c) for c in body["prompt"]]
        if body.get("model") != "fake":
            return self._send(404, {"error": f"model {body.get('model')} not found"})
        assert body["echo"] is True and body["max_tokens"] == 1 and body["logprobs"] >= 1
        prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
        choices = []
        for index, ids in enumerate(prompts):
            lps = [None] + [fake_logprob(a, b) for a, b in zip(ids, ids[1:], strict=False)] + [-0.5]
            tops = [None] + [{"t": lp} for lp in lps[1:]]
            choices.append({"index": index, "text": "x", "logprobs": {"token_logprobs": lps, "top_logprobs": tops}})
        self._send(200, {"choices": choices})


@pytest.fixture(scope="module")
def fake_endpoint(tmp_path_factory):
    from harness.standins.tokenizer import build_tokenizer

    tok_dir = tmp_path_factory.mktemp("tok")
    build_tokenizer().save_pretrained(tok_dir)
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeCompletions)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Endpoint(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", model="fake", tokenizer=str(tok_dir))
    server.shutdown()


@pytest.mark.parametrize("task, limit", [("arc_easy", 12), ("boolq", 6), ("winogrande", 6), ("mmlu", 9)])
def test_scores_and_records_from_known_loglikelihoods(task, limit, fake_endpoint, tmp_path):
    import numpy as np
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(fake_endpoint.tokenizer)
    result = run_task(task, fake_endpoint, limit, tmp_path)
    metric = SPECS[task].metric
    assert result.status == "ok" and result.n_samples == limit == len(result.samples)
    if task == "mmlu":
        picked = mmlu_selection(limit)
        assert sorted((s.subject, s.doc_id) for s in result.samples) == sorted(
            (subject, row) for subject, rows in picked.items() for row in rows)
    else:
        assert [s.doc_id for s in result.samples] == list(range(limit))
    expected_scores = {"acc": [], "acc_norm": []}
    for sample in result.samples:
        prompt, continuations, gold = expected_doc(task, raw_row(task, sample))
        contexts = prompt if isinstance(prompt, list) else [prompt] * len(continuations)
        assert sample.prompt == prompt and sample.continuations == continuations and sample.target == gold
        lls = []
        for context, continuation in zip(contexts, continuations, strict=True):
            context_ids, cont_ids = encode_pair(tokenizer, context, continuation)
            whole = context_ids + cont_ids
            lls.append(sum(fake_logprob(whole[i - 1], whole[i]) for i in range(len(context_ids), len(whole))))
        assert np.allclose(sample.loglikelihoods, lls, rtol=0, atol=1e-9)
        pred = int(np.argmax(lls))
        lengths = [len(c) - 1 for c in continuations]  # lm-eval normalises by the choice's characters
        pred_norm = int(np.argmax(np.array(lls) / np.array(lengths)))
        chosen = pred_norm if metric == "acc_norm" else pred
        assert sample.extracted == chosen and sample.score == float(chosen == gold)
        expected_scores["acc"].append(float(pred == gold))
        expected_scores["acc_norm"].append(float(pred_norm == gold))
    assert result.metrics["acc"] == pytest.approx(np.mean(expected_scores["acc"]))
    assert result.score == pytest.approx(np.mean(expected_scores[metric]))
    assert result.score == result.metrics[metric]
    n = len(result.samples)
    assert result.metrics["acc_stderr"] == pytest.approx(np.std(expected_scores["acc"], ddof=1) / math.sqrt(n))
    if task == "arc_easy":  # acc and acc_norm differ here, so picking the wrong one would show
        assert result.metrics["acc_norm"] == pytest.approx(np.mean(expected_scores["acc_norm"]))
        assert result.metrics["acc"] != result.metrics["acc_norm"]
    else:
        assert "acc_norm" not in result.metrics
    prov = result.provenance
    assert prov["num_fewshot"] == 0 and prov["lm_eval_version"] == "0.4.13" and prov["data_source"] == "offline"
    assert prov["max_length"] == 4096  # read from the server's /v1/models
    for rel, digest in prov["data_sha256"].items():
        assert hashlib.sha256((DATASETS / rel).read_bytes()).hexdigest() == digest
    assert len(prov["data_sha256"]) == (114 if task == "mmlu" else 1)
    for name, digest in prov["task_yaml_sha256"].items():
        written = tmp_path / "lm_eval_tasks" / task / name
        assert hashlib.sha256(written.read_bytes()).hexdigest() == digest


def test_a_server_error_names_the_task(fake_endpoint, tmp_path):
    wrong = fake_endpoint.model_copy(update={"model": "wrong"})
    with pytest.raises(TaskError, match="arc_easy: .* refused .*HTTP 404.*model wrong not found"):
        run_task("arc_easy", wrong, 2, tmp_path, options={"max_retries": 1})


# -- one vLLM server for the module -------------------------------------------------------
@pytest.fixture(scope="module")
def served(served_tiny):
    return served_tiny.endpoint, served_tiny.model_dir


@pytest.fixture(scope="module")
def served_results(served, tmp_path_factory):
    endpoint, _ = served
    work = tmp_path_factory.mktemp("mc_work")
    results, seconds = {}, {}
    for task in MC_TASKS:
        started = time.monotonic()
        results[task] = run_task(task, endpoint, 20, work)
        seconds[task] = time.monotonic() - started
    print("\nMC task seconds (20 samples):", {t: round(s, 1) for t, s in seconds.items()},
          f"total {sum(seconds.values()):.1f}")
    return results


def test_every_mc_task_runs_on_20_samples_of_a_served_model(served_results):
    for task, result in served_results.items():
        if task == "rte":
            assert result.status == "not_run"
            continue
        assert result.status == "ok" and result.n_samples == 20, task
        assert result.score == result.metrics[SPECS[task].metric] and 0.0 <= result.score <= 1.0
        assert result.score == pytest.approx(sum(s.score for s in result.samples) / 20)
        for sample in result.samples:
            assert len(sample.loglikelihoods) == len(sample.continuations) >= 2
            assert all(ll < 0 and math.isfinite(ll) for ll in sample.loglikelihoods)
    score = category_score("mc", list(served_results.values()))
    ran = [r.score for t, r in served_results.items() if t != "rte"]
    assert score.value == pytest.approx(sum(ran) / 7) and score.missing == ["rte"]


def test_served_loglikelihoods_match_transformers(served, served_results):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, model_dir = served
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    worst, compared = 0.0, 0
    for result in served_results.values():
        for sample in result.samples[:2]:
            contexts = sample.prompt if isinstance(sample.prompt, list) else [sample.prompt] * len(sample.continuations)
            for context, continuation, served_ll in zip(contexts, sample.continuations, sample.loglikelihoods,
                                                        strict=True):
                context_ids, cont_ids = encode_pair(tokenizer, context, continuation)
                ids = torch.tensor([context_ids + cont_ids])
                with torch.no_grad():
                    logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
                positions = torch.arange(len(context_ids) - 1, ids.shape[1] - 1)
                reference = float(logprobs[positions, ids[0, len(context_ids):]].sum())
                worst = max(worst, abs(reference - served_ll))
                compared += 1
    print(f"\nmax |served - transformers| log-likelihood over {compared} choices: {worst:.2e}")
    assert compared >= 30 and worst < 1e-3
