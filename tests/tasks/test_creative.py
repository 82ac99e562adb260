"""WildBench creative writing: the judge prompt, the reply parser, and the judged path end to end.

The end-to-end tests serve one tiny zoo model that is both the evaluated model and
the judge. Unconstrained, its replies are gibberish, which exercises the unparseable
path; with a regex-constrained judge reply (vLLM structured outputs) every reply holds
a score, which exercises the scoring path. Both are checked against a recount of the
raw judge replies stored in the sample records.
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from harness.tasks.base import Endpoint, GenerationSettings, TaskContext
from harness.tasks.creative import JudgeUnreliableError, WildBenchCreative, read_rows
from harness.tasks.judge import (
    PLACEHOLDERS,
    TEMPLATE_MD5,
    build_judge_prompt,
    format_history,
    load_template,
    parse_judge_score,
    rescale,
)
from tests.conftest import DATASETS, REPO

FIXTURE = REPO / "tests" / "fixtures" / "wildbench" / "v2_test_sample.jsonl"
TEMPLATE = DATASETS / "wildbench" / "eval_template.score.v2.md"

# allenai/WildBench config v2 (dataset card): field -> JSON type; conversation turns likewise.
HF_V2_SCHEMA = {"id": str, "session_id": str, "conversation_input": list, "references": dict, "length": int,
                "checklist": list, "intent": str, "primary_tag": str, "secondary_tags": list}
HF_TURN_SCHEMA = {"content": str, "language": str, "redacted": bool, "role": str, "timestamp": (str, type(None)),
                  "toxic": bool}


# -- parser ------------------------------------------------------------------------------------
@pytest.mark.parametrize("reply, score", [
    ('Analysis...\n```\n{\n    "strengths": "vivid",\n    "weaknesses": "short",\n    "score": "7"\n}\n```', 7.0),
    ('{"strengths": "a", "weaknesses": "b", "score": 8}', 8.0),
    ('{"strengths": "a", "weaknesses": "b", "score": "7.5"}', 7.5),
    ('{"strengths": "a", "weaknesses": "b", "score": "9/10"}', 9.0),
    ('{"strengths": "uses {braces} and \\"quotes\\"", "weaknesses": "none", "score": "10"}', 10.0),
    ('{"strengths": "line one\nline two", "weaknesses": "x", "score": "4"}', 4.0),  # raw newline in a string
    ('draft {"score": "3"} then final: {"strengths": "s", "weaknesses": "w", "score": "6"} thanks', 6.0),
    ('```json\n{"strengths": "s", "weaknesses": "w", "score": "5"', 5.0),  # truncated after the score
    ('{"score": 1}', 1.0),
])
def test_parser_reads_well_formed_replies(reply, score):
    assert parse_judge_score(reply) == score


@pytest.mark.parametrize("reply", [
    None, "", "The response is good. I would give it a seven.",
    '{"strengths": "[analysis]", "weaknesses": "[analysis]", "score": "[1~10]"}',  # the template echoed back
    '{"strengths": "a", "weaknesses": "b", "score": "11"}', '{"strengths": "a", "score": 0}',
    '{"strengths": "a", "weaknesses": "b", "score": "seven"}', '{"score": true}', '{"score": null}',
    '{"strengths": "a", "weaknesses": "b", "sco',  # truncated before the score
    '{"strengths": "a", "weaknesses": "b"}', "score: 7",
])
def test_parser_rejects_malformed_replies(reply):
    assert parse_judge_score(reply) is None


def test_rescale_maps_one_to_ten_onto_unit_interval():
    assert [rescale(s) for s in (1, 5.5, 10)] == [0.0, 0.5, 1.0]


# -- prompt and data -------------------------------------------------------------------------------
def test_template_and_prompt():
    template, source = load_template(TEMPLATE)
    assert source == str(TEMPLATE) and hashlib.md5(TEMPLATE.read_bytes()).hexdigest() == TEMPLATE_MD5
    rows = read_rows(FIXTURE)
    multi = next(r for r in rows if len(r.conversation_input) == 3)
    turns = [t.model_dump() for t in multi.conversation_input]
    output = "Reply that mentions {$checklist} literally."
    prompt = build_judge_prompt(template, turns, output, multi.checklist)
    assert not any(p in prompt.replace(output, "") for p in PLACEHOLDERS)
    assert output in prompt  # substituted once, not re-expanded
    history = f"USER: {turns[0]['content']}\n\nASSISTANT: {turns[1]['content']}\n\n"
    assert format_history(turns) == history
    assert f"<|begin_of_history|>\n\n{history}\n\n<|end_of_history|>" in prompt
    assert f"<|begin_of_query|>\n\n{turns[2]['content']}\n\n<|end_of_query|>" in prompt
    checklist = "".join(f"- {c}\n" for c in multi.checklist)
    assert f"<|begin_of_checklist|>\n\n{checklist}\n\n<|end_of_checklist|>" in prompt
    # Everything outside the placeholders is the template, unchanged.
    pieces = re.split("|".join(re.escape(p) for p in PLACEHOLDERS), template)
    assert all(piece in prompt for piece in pieces)


def test_fixture_has_the_wildbench_v2_schema():
    for line in FIXTURE.read_text().splitlines():
        row = json.loads(line)
        assert list(row) == list(HF_V2_SCHEMA)
        assert all(isinstance(row[k], t) for k, t in HF_V2_SCHEMA.items())
        assert list(row["references"]) == ["gpt-4"] and all(isinstance(c, str) for c in row["checklist"])
        for turn in row["conversation_input"]:
            assert set(turn) == set(HF_TURN_SCHEMA)
            assert all(isinstance(turn[k], t) for k, t in HF_TURN_SCHEMA.items())
        assert row["conversation_input"][-1]["role"] == "user"


def test_missing_judge_and_data_are_reported_before_running(tmp_path):
    task = WildBenchCreative({"data_file": tmp_path / "absent.jsonl"})
    ctx = TaskContext(endpoint=Endpoint(base_url="http://127.0.0.1:9/v1", model="m"), data_dir=DATASETS)
    problems = task.check_ready(ctx)
    assert any("judge" in p for p in problems) and any("absent.jsonl" in p for p in problems)
    assert WildBenchCreative().check_ready(ctx)[1].endswith("or set the task option data_file)")


# -- served: the model answers, the same model judges ---------------------------------------------
@pytest.fixture(scope="module")
def served(served_tiny):
    return served_tiny.endpoint


def _run(endpoint: Endpoint, **options):
    task = WildBenchCreative({"data_file": FIXTURE, "judge_max_tokens": 64, **options})
    ctx = TaskContext(endpoint=endpoint, generation=GenerationSettings(max_tokens=32), data_dir=DATASETS,
                      judge=endpoint, progress=False)
    return task.run(ctx)


def _check_samples(samples, template):
    rows = [r for r in read_rows(FIXTURE) if r.primary_tag == "Creative Writing"]
    assert [s.sample_id for s in samples] == [r.session_id for r in rows]  # the coding row is filtered out
    for sample, row in zip(samples, rows, strict=True):
        turns = [t.model_dump() for t in row.conversation_input]
        assert sample.prompt == [{"role": t["role"], "content": t["content"]} for t in turns]
        assert sample.judge_prompt == build_judge_prompt(template, turns, sample.output, row.checklist)
        if sample.output.strip():  # an empty reply is scored 1 without the judge
            assert sample.judge_parsed == (parse_judge_score(sample.judge_reply) is not None)


def test_unparseable_judge_replies_are_counted_not_dropped(served):
    template, _ = load_template(TEMPLATE)
    try:
        result = _run(served, max_unparseable_fraction=1.0)
    except JudgeUnreliableError as exc:  # no reply had a score: the partial result still has every sample
        assert "judge replies had no usable 1-10 score" in str(exc)
        result = exc.partial_result
        assert result.score is None
    samples = result.samples
    _check_samples(samples, template)
    unparseable = [s.sample_id for s in samples if s.output.strip() and parse_judge_score(s.judge_reply) is None]
    assert unparseable, "a random tiny model was expected to write at least one unusable judge reply"
    assert result.metrics["n_judge_unparseable"] == len(unparseable)
    assert result.metrics["judge_unparseable_fraction"] == len(unparseable) / len(samples)
    assert result.provenance["judge_unparseable_ids"] == unparseable
    # With the default tolerance (20 %) the same replies make the task fail loudly.
    with pytest.raises(JudgeUnreliableError, match=f"{len(unparseable)} of {len(samples)} judge replies"):
        _run(served)


# A reply the judge is forced to write: valid JSON with a 1-10 score.
SCORE_REGEX = r'\{"strengths": "[a-z ]{0,12}", "weaknesses": "[a-z ]{0,12}", "score": "([1-9]|10)"\}'


def test_constrained_judge_scores_every_sample(served):
    template, _ = load_template(TEMPLATE)
    result = _run(served, judge_extra_body={"structured_outputs": {"regex": SCORE_REGEX}})
    _check_samples(result.samples, template)
    raw = [int(re.fullmatch(SCORE_REGEX, s.judge_reply).group(1)) for s in result.samples]
    assert result.metrics["n_judge_unparseable"] == 0 and result.n_samples == 4
    assert [s.score for s in result.samples] == [(r - 1) / 9 for r in raw]
    assert result.score == pytest.approx(sum((r - 1) / 9 for r in raw) / 4)
    assert result.metrics["mean_judge_score"] == pytest.approx(sum(raw) / 4)
    prov = result.provenance
    assert prov["judge_model"] == "tiny" and prov["judge_generation"]["max_tokens"] == 64
    assert prov["judge_generation"]["extra_body"] == {"structured_outputs": {"regex": SCORE_REGEX}}
    assert prov["generation"]["max_tokens"] == 32 and prov["n_available"] == 4
    assert prov["data_sha256"] == {FIXTURE.name: hashlib.sha256(FIXTURE.read_bytes()).hexdigest(),
                                   TEMPLATE.name: hashlib.sha256(TEMPLATE.read_bytes()).hexdigest()}
