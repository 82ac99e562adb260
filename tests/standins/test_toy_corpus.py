"""The synthetic corpus: seeded, held out, correct references, distinct domains, committed data reproducible."""

from __future__ import annotations

import json
import re
from itertools import islice
from pathlib import Path

import pytest

from harness.standins.toy import corpus
from harness.standins.toy.corpus import DOMAINS, FactBase, eval_items, training_stream, write_eval_data

REPO = Path(__file__).resolve().parents[2]
MODEL_DATA = REPO / "models" / "toy-moe" / "data"


def test_seeded():
    for domain in DOMAINS:
        assert eval_items(domain, 20) == eval_items(domain, 20)
    a = [ex for ex in islice(training_stream(1), 200)]
    assert a == list(islice(training_stream(1), 200))
    assert a != list(islice(training_stream(2), 200))


def test_eval_prompts_are_held_out_of_training():
    held = {d: {item["question"] for item in eval_items(d)} for d in ("math", "coding", "creative")}
    seen = 0
    for example in islice(training_stream(), 30000):
        if example.prompt is not None:
            assert example.prompt not in held[example.domain], example
            seen += 1
    # The generators overlap enough that the filter is doing work, not vacuously passing.
    assert seen > 20000


def test_math_answers_follow_from_the_question():
    for item in eval_items("math"):
        a, b = (int(x) for x in re.findall(r"\d+", item["question"])[:2])
        product = "bags" in item["question"] or "rows" in item["question"]
        minus = any(w in item["question"] for w in ("gives away", "takes out", "lost"))
        expected = a * b if product else a - b if minus else a + b
        assert item["answer"] == expected, item
        assert item["solution"].endswith(f"The answer is {expected}.")


def test_coding_references_pass_their_tests_and_wrong_code_fails():
    from harness.sandbox.api import run_python

    items = eval_items("coding", 25)
    source = "\n".join(item["reference"] + "\n" + "\n".join(item["tests"]) for item in items)
    assert run_python(source, timeout_s=30).returncode == 0
    # A near miss (the constant off by one) fails at least one held-out assert.
    with_constant = [item for item in items if re.search(r"return .*\d", item["reference"])][:4]
    assert with_constant
    for item in with_constant:
        head, body = item["reference"].split("return ")
        wrong = head + "return " + re.sub(r"\d+", lambda m: str(int(m.group()) + 1), body)
        assert run_python(wrong + "\n" + "\n".join(item["tests"]), timeout_s=30).returncode != 0


def test_mc_gold_is_the_fact_and_distractors_are_not():
    facts = FactBase.generate().facts
    for item in eval_items("mc"):
        assert len(item["choices"]) == len(set(item["choices"])) == 4
        assert item["choices"][item["gold"]] == facts[item["entity"]][item["relation"]]
        assert item["entity"] in item["question"] and item["context"].endswith("Answer:")
    # Gold positions are spread, so a position bias cannot score well.
    golds = [item["gold"] for item in eval_items("mc")]
    assert all(golds.count(i) > len(golds) / 8 for i in range(4))


def test_creative_references_meet_their_constraints():
    from harness.tasks.rubric_judge import rubric

    for item in eval_items("creative"):
        graded = rubric(item["solution"], item["constraints"])
        assert graded["score"] == 10.0, (item, graded)


def test_domains_use_different_vocabulary():
    words: dict[str, set[str]] = {d: set() for d in DOMAINS}
    for example in islice(training_stream(), 8000):
        words[example.domain] |= set(re.findall(r"[A-Za-z_]+", (example.prompt or "") + " " + example.response))
    for i, a in enumerate(DOMAINS):
        for b in DOMAINS[i + 1:]:
            jaccard = len(words[a] & words[b]) / len(words[a] | words[b])
            assert jaccard < 0.25, (a, b, jaccard)


def test_committed_eval_data_is_what_the_generator_writes(tmp_path):
    if not MODEL_DATA.is_dir():
        pytest.fail(f"{MODEL_DATA} is missing: train the toy model (see models/toy-moe/TRAINING.md)")
    written = write_eval_data(tmp_path)
    for name, path in written.items():
        assert path.read_bytes() == (MODEL_DATA / path.name).read_bytes(), name
    assert [json.loads(line)["id"] for line in (MODEL_DATA / "math.jsonl").read_text().splitlines()][:2] == \
        ["toy_math/0", "toy_math/1"]


def test_unknown_domain_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown domain"):
        corpus.eval_items("poetry")


def test_training_learns_only_the_assistant_turn():
    from harness.standins.toy.corpus import TrainingExample
    from harness.standins.toy.train import IGNORE, build_toy_tokenizer, encode

    tokenizer = build_toy_tokenizer()
    ids, labels = encode(TrainingExample("math", "Tom has 3 cups.", "3 + 0 = 3. The answer is 3."), tokenizer)
    learned = tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE])
    assert learned == "3 + 0 = 3. The answer is 3.<|im_end|>\n"
    assert "Tom" in tokenizer.decode(ids)
    raw_ids, raw_labels = encode(TrainingExample("mc", None, "The zorbli eats moss."), tokenizer)
    assert raw_ids == raw_labels and raw_ids[-1] == tokenizer.eos_token_id
    # Digits are single tokens, so numbers are learned digit by digit.
    assert tokenizer.tokenize("1234") == ["1", "2", "3", "4"]


def test_committed_checkpoint_is_small_and_consistent():
    from transformers import AutoTokenizer

    model_dir = REPO / "models" / "toy-moe"
    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert config["model_type"] == "qwen3_moe" and 8 <= config["num_experts"] <= 32
    assert config["vocab_size"] == len(tokenizer) and config["head_dim"] == 64
    size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    assert size <= 20 * 2**20, size
    record = json.loads((model_dir / "training.json").read_text())
    assert record["command"].startswith("python -m harness.standins.toy.train models/toy-moe")
    assert record["curve"][-1]["loss"] < record["curve"][0]["loss"] / 5
    # The tokenizer shipped is the one the training script builds (same merges, same template).
    from harness.standins.toy.train import build_toy_tokenizer

    rebuilt = build_toy_tokenizer(record["settings"]["seed"])
    assert rebuilt.get_vocab() == tokenizer.get_vocab() and rebuilt.chat_template == tokenizer.chat_template


def test_a_fresh_sample_keeps_the_corpus():
    facts = FactBase.generate().facts
    fresh = list(islice(training_stream(sample_seed=99), 300))
    assert fresh != list(islice(training_stream(), 300))
    for example in fresh:
        if example.domain == "mc":
            assert any(entity in example.response for entity in facts), example
