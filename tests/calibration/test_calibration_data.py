"""Calibration data -> token batches: shapes, packing, chat template, mixing, keys, errors.

Expected tokens are computed here independently (render each record with the chat
template, tokenise) and compared with what the builder produced.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
import sys
import types
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from harness.calibration.data import (
    WRITING_PROMPT_TEMPLATE,
    CalibrationSpec,
    DatasetSpec,
    build_calibration_batch,
    default_spec,
    spec_fingerprint,
)
from harness.standins.tokenizer import build_tokenizer

FIXTURES = Path(__file__).parents[1] / "fixtures" / "calibration"
CODE = FIXTURES / "code_instruct.jsonl"  # 30 instruction/output records
CHAT = FIXTURES / "chat_messages.json"  # 12 records with a `messages` list


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture
def text_parquet(tmp_path) -> Path:
    """Plain-text records as parquet (written here rather than committing a binary)."""
    path = tmp_path / "plain.parquet"
    texts = [f"Plain document {i}: the quick brown fox counts to {i * 11} by the sea." for i in range(20)]
    pd.DataFrame({"text": texts, "id": range(20)}).to_parquet(path)
    return path


def spec(*datasets: dict | str | Path, **kw) -> CalibrationSpec:
    entries = [d if isinstance(d, dict) else {"source": str(d)} for d in datasets]
    return CalibrationSpec(datasets=[DatasetSpec(**d) for d in entries], **kw)


def code_records() -> list[dict]:
    return [json.loads(line) for line in CODE.read_text().splitlines()]


def render_ids(tok, prompt: str, answer: str) -> list[int]:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    text = tok.apply_chat_template(messages, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


def code_ids(tok) -> list[list[int]]:
    return [render_ids(tok, r["instruction"], r["output"]) for r in code_records()]


def test_concat_rows_are_whole_templated_records_joined_by_eos(tok):
    batch = build_calibration_batch(spec(CODE, samples=8, length=64), tok)
    assert batch.input_ids.shape == (8, 64) and batch.attention_mask.shape == (8, 64)
    assert batch.input_ids.dtype == torch.long and batch.attention_mask.dtype == torch.long
    assert bool((batch.attention_mask == 1).all())
    assert not bool((batch.input_ids == tok.pad_token_id).any())

    # Walk the flattened rows: each piece must be one record's chat-templated ids (the
    # last one cut), each followed by eos, no record twice.
    flat = batch.input_ids.flatten().tolist()
    candidates = code_ids(tok)
    pos, used = 0, []
    while pos < len(flat):
        rest = flat[pos:]
        whole = [i for i, ids in enumerate(candidates) if rest[: len(ids)] == ids and len(ids) < len(rest)]
        if whole:
            assert len(whole) == 1
            used.append(whole[0])
            pos += len(candidates[whole[0]])
            assert flat[pos] == tok.eos_token_id
            pos += 1
        else:
            assert any(ids[: len(rest)] == rest for ids in candidates), "tail is no record's prefix"
            break
    assert len(used) >= 2 and len(set(used)) == len(used)


def test_pad_mode_masks_exactly_the_padding(tok):
    length = 150  # the fixture's templated records are 123..183 tokens: some cut, some padded
    batch = build_calibration_batch(spec(CODE, samples=10, length=length, packing="pad"), tok)
    assert batch.input_ids.shape == (10, length)
    candidates = code_ids(tok)
    padded = cut = 0
    for ids, mask in zip(batch.input_ids.tolist(), batch.attention_mask.tolist(), strict=True):
        real = sum(mask)
        assert mask == [1] * real + [0] * (length - real)
        assert ids[real:] == [tok.pad_token_id] * (length - real)
        assert tok.pad_token_id not in ids[:real]
        assert any(c[:length] == ids[:real] for c in candidates)
        padded += real < length
        cut += real == length
    assert padded and cut


def reference_draws(n: int, seed: int) -> list[int]:
    """Uniform draws without replacement as the paper's code makes them: seeded random indices,
    a repeat drawn again."""
    rng, order = random.Random(seed), []
    while len(order) < n:
        i = rng.randint(0, n - 1)
        if i not in order:
            order.append(i)
    return order


def test_reap_repo_rows_start_with_a_fresh_sample(tok):
    length, rows = 300, 6  # the fixture's templated records are 123..183 tokens: two and a bit per row
    batch = build_calibration_batch(spec(CODE, samples=rows, length=length, packing="reap_repo", seed=7), tok)
    assert batch.input_ids.shape == (rows, length)
    candidates = code_ids(tok)
    order = iter(reference_draws(len(candidates), 7))
    for ids, mask in zip(batch.input_ids.tolist(), batch.attention_mask.tolist(), strict=True):
        # Walk the row: a drawn record (from its first token), one masked position, the next drawn
        # record, ...; the last one cut at the row's end, its remainder not carried over.
        pos, pieces = 0, 0
        while pos < length:
            record = candidates[next(order)]
            piece = record[: length - pos]
            assert ids[pos : pos + len(piece)] == piece and mask[pos : pos + len(piece)] == [1] * len(piece)
            pos += len(piece)
            pieces += 1
            if pos < length:
                assert mask[pos] == 0 and ids[pos] == tok.pad_token_id  # the reference's gap
                pos += 1
        assert pieces >= 2
        assert ids[0] == candidates[0][0] == tok.convert_tokens_to_ids("<|im_start|>")
    # Every row starts a record, so the last cut record's rest never opens the next row, and
    # nothing is drawn twice.
    concat = build_calibration_batch(spec(CODE, samples=rows, length=length), tok)
    assert sum(ids[0] == candidates[0][0] for ids in concat.input_ids.tolist()) < rows  # concat rows start mid-record


def test_reap_repo_draws_follow_the_seed_and_run_out_clearly(tok):
    a = build_calibration_batch(spec(CODE, samples=3, length=200, packing="reap_repo"), tok)
    b = build_calibration_batch(spec(CODE, samples=3, length=200, packing="reap_repo"), tok)
    c = build_calibration_batch(spec(CODE, samples=3, length=200, packing="reap_repo", seed=1), tok)
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.input_ids, c.input_ids)
    first = code_ids(tok)[reference_draws(30, 0)[0]]
    assert a.input_ids[0, : len(first)].tolist() == first
    with pytest.raises(ValueError, match=r"30 non-empty records fill only \d+ of 20 rows of 300 tokens"):
        build_calibration_batch(spec(CODE, samples=20, length=300, packing="reap_repo"), tok)


def test_packing_mode_is_in_the_key():
    keys = {mode: json.dumps(spec_fingerprint(spec(CODE, samples=8, length=64, packing=mode)), sort_keys=True)
            for mode in ("concat", "pad", "reap_repo")}
    assert len(set(keys.values())) == 3
    assert spec_fingerprint(spec(CODE, samples=8, length=64, packing="reap_repo"))["packing"] == "reap_repo"
    with pytest.raises(ValidationError, match="packing"):
        spec(CODE, samples=8, length=64, packing="stream")


def bos_tokenizer(template_bos: bool):
    """The zoo tokenizer made Llama-like: it prepends BOS on encode, and (optionally) its chat
    template starts with the BOS token too."""
    from tokenizers.processors import TemplateProcessing

    tok = build_tokenizer()
    bos = tok.convert_tokens_to_ids("<|bos|>")
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", bos)])
    if template_bos:
        tok.chat_template = "{{ bos_token }}" + tok.chat_template
    assert tok("x")["input_ids"][0] == bos  # the stand-in really adds it
    return tok, bos


@pytest.mark.parametrize("packing", ["concat", "pad", "reap_repo"])
def test_one_bos_after_a_template_that_has_one(packing, text_parquet):
    tok, bos = bos_tokenizer(template_bos=True)
    batch = build_calibration_batch(spec(CODE, samples=4, length=400, packing=packing), tok)
    eos = tok.eos_token_id
    for ids, mask in zip(batch.input_ids.tolist(), batch.attention_mask.tolist(), strict=True):
        real = [t for t, m in zip(ids, mask, strict=True) if m]
        starts = [i for i, t in enumerate(real) if t == bos]
        assert bos not in [real[i + 1] for i in starts if i + 1 < len(real)]  # never two in a row
        if packing != "concat":
            assert real[0] == bos  # a row starts with a record, whose first token is the template's BOS
        if packing == "concat":
            assert all(real[i - 1] == eos for i in starts if i > 0)
    # Plain text is not templated: it gets the tokenizer's own BOS, once.
    plain = build_calibration_batch(spec(text_parquet, samples=2, length=30, packing="pad"), tok)
    for row in plain.input_ids.tolist():
        assert row[0] == bos and row[1] != bos


def test_prompt_template_wraps_the_prompt(tok):
    template = "Story time.\n{prompt}\n(be brief)"
    batch = build_calibration_batch(
        spec({"source": str(CODE), "prompt_template": template}, samples=2, length=400, packing="pad"), tok)
    records = code_records()
    for row in batch.input_ids.tolist():
        text = tok.decode(row, skip_special_tokens=False)
        record = next(r for r in records if f"\n{r['instruction']}\n" in text)
        assert f"<|im_start|>user\nStory time.\n{record['instruction']}\n(be brief)<|im_end|>" in text
    plain = spec_fingerprint(spec(CODE, samples=2, length=64))
    assert spec_fingerprint(spec({"source": str(CODE), "prompt_template": template}, samples=2, length=64)) != plain
    with pytest.raises(ValidationError, match="exactly once"):
        DatasetSpec(source=str(CODE), prompt_template="no placeholder")
    with pytest.raises(ValidationError, match="prompt/response records only"):
        DatasetSpec(source=str(CODE), text_field="text", prompt_template="{prompt}")
    with pytest.raises(ValueError, match="its records are 'messages'"):
        build_calibration_batch(spec({"source": str(CHAT), "prompt_template": "x {prompt}"}, samples=1, length=8),
                                tok)


def test_chat_template_keeps_the_assistant_answer(tok):
    batch = build_calibration_batch(spec(CODE, samples=3, length=256, packing="pad"), tok)
    for row in batch.input_ids:
        text = tok.decode(row.tolist(), skip_special_tokens=False)
        record = next(r for r in code_records() if r["instruction"] in text)
        assert record["output"] in text
        assert "<|im_start|>user\n" in text and "<|im_start|>assistant\n" in text
        assert text.index("<|im_start|>assistant") > text.index(record["instruction"])


def test_chat_template_kwargs_reach_the_template():
    tok = build_tokenizer()
    tok.chat_template = "{% if flag %}FLAG {% endif %}" + tok.chat_template
    on = build_calibration_batch(spec(CHAT, samples=2, length=64, chat_template_kwargs={"flag": True}), tok)
    off = build_calibration_batch(spec(CHAT, samples=2, length=64), tok)
    assert tok.decode(on.input_ids[0].tolist()).startswith("FLAG ")
    assert "FLAG" not in tok.decode(off.input_ids.flatten().tolist())


def test_no_special_tokens_are_added_on_top_of_the_template():
    """A tokenizer that prepends BOS on encode (as Llama-style ones do) must not get it here."""
    from tokenizers.processors import TemplateProcessing

    tok = build_tokenizer()
    bos = tok.convert_tokens_to_ids("<|bos|>")
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|bos|> $A", special_tokens=[("<|bos|>", bos)]
    )
    assert tok("x")["input_ids"][0] == bos  # the stand-in really adds it
    batch = build_calibration_batch(spec(CODE, samples=4, length=64), tok)
    assert not bool((batch.input_ids == bos).any())


def test_messages_json_is_templated_and_plain_text_is_not(tok, text_parquet):
    chat = build_calibration_batch(spec(CHAT, samples=3, length=200, packing="pad"), tok)
    text = tok.decode(chat.input_ids[0].tolist(), skip_special_tokens=False)
    assert text.startswith("<|im_start|>user\nQuestion ") and "<|im_start|>assistant\nAnswer " in text

    plain = build_calibration_batch(spec(text_parquet, samples=4, length=40), tok)
    decoded = tok.decode(plain.input_ids.flatten().tolist(), skip_special_tokens=False)
    assert "<|im_start|>" not in decoded and decoded.startswith("Plain document ")
    first = decoded.split("<|endoftext|>")[0]
    assert plain.input_ids.flatten().tolist()[: len(tok(first)["input_ids"])] == tok(first)["input_ids"]


def test_apply_chat_template_off_joins_the_turns_as_text(tok):
    batch = build_calibration_batch(
        spec(CODE, samples=2, length=300, packing="pad", apply_chat_template=False), tok
    )
    text = tok.decode(batch.input_ids[0].tolist(), skip_special_tokens=True)
    record = next(r for r in code_records() if text.startswith(r["instruction"]))
    assert text == f"{record['instruction']}\n\n{record['output']}"


def test_file_types_give_the_same_tokens(tok, tmp_path):
    """gzip, JSON lines in a .json file, and parquet (list columns come back as arrays)."""
    gz = tmp_path / "code.jsonl.gz"
    gz.write_bytes(gzip.compress(CODE.read_bytes()))
    as_json = tmp_path / "code.json"
    as_json.write_text(CODE.read_text())
    reference = build_calibration_batch(spec(CODE, samples=4, length=32), tok).input_ids
    for path in (gz, as_json):
        assert torch.equal(
            build_calibration_batch(spec(path, samples=4, length=32), tok).input_ids, reference
        )

    chat_parquet = tmp_path / "chat.parquet"
    pd.DataFrame(json.loads(CHAT.read_text())).to_parquet(chat_parquet)
    chat = build_calibration_batch(spec(CHAT, samples=4, length=32), tok).input_ids
    assert torch.equal(build_calibration_batch(spec(chat_parquet, samples=4, length=32), tok).input_ids, chat)


def test_composite_spec_mixes_with_the_requested_counts(tok, text_parquet):
    s = spec(
        {"source": str(CODE), "samples": 3},
        {"source": str(CHAT), "samples": 2},
        {"source": str(text_parquet), "samples": 1},
        samples=6,
        length=48,
    )
    batch = build_calibration_batch(s, tok)
    assert batch.input_ids.shape == (6, 48)
    assert Counter(batch.sources) == {str(CODE): 3, str(CHAT): 2, str(text_parquet): 1}
    for row, source in zip(batch.input_ids, batch.sources, strict=True):
        if source == str(text_parquet):
            assert "Plain document" in tok.decode(row.tolist())


def test_same_spec_same_tensors_and_seed_changes_selection(tok):
    a = build_calibration_batch(spec(CODE, samples=4, length=64), tok)
    b = build_calibration_batch(spec(CODE, samples=4, length=64), tok)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.attention_mask, b.attention_mask)
    c = build_calibration_batch(spec(CODE, samples=4, length=64, seed=1), tok)
    assert not torch.equal(a.input_ids, c.input_ids)


def test_batches_cover_the_rows_in_order(tok):
    batch = build_calibration_batch(spec(CODE, samples=10, length=16), tok)
    parts = list(batch.batches(4))
    assert [p[0].shape[0] for p in parts] == [4, 4, 2]
    assert torch.equal(torch.cat([p[0] for p in parts]), batch.input_ids)
    assert torch.equal(torch.cat([p[1] for p in parts]), batch.attention_mask)
    with pytest.raises(ValueError):
        next(batch.batches(0))


def test_fingerprint_tracks_content_and_shape_only(tmp_path):
    path = tmp_path / "data.jsonl"
    shutil.copy(CODE, path)
    base = spec_fingerprint(spec(path, samples=8, length=64))
    json.dumps(base)  # must be JSON-able
    assert spec_fingerprint(spec(path, samples=8, length=64)) == base
    assert spec_fingerprint(spec({"source": str(path), "samples": 8}, samples=8, length=64)) == base
    path.write_text(CODE.read_text())  # rewritten, same bytes
    assert spec_fingerprint(spec(path, samples=8, length=64)) == base
    moved = tmp_path / "other"
    moved.mkdir()
    shutil.copy(path, moved / path.name)
    assert spec_fingerprint(spec(moved / path.name, samples=8, length=64)) == base

    assert spec_fingerprint(spec(path, samples=9, length=64)) != base
    assert spec_fingerprint(spec(path, samples=8, length=65)) != base
    assert spec_fingerprint(spec(path, samples=8, length=64, seed=3)) != base
    assert spec_fingerprint(spec(path, samples=8, length=64, packing="pad")) != base
    path.write_text(CODE.read_text().replace("Task 0:", "Task zero:"))
    assert spec_fingerprint(spec(path, samples=8, length=64)) != base


def test_fingerprint_of_a_hub_dataset_names_it_without_touching_the_network():
    fp = spec_fingerprint(default_spec("c4", samples=4, length=8))
    (entry,) = fp["datasets"]
    assert (entry["source"], entry["subset"], entry["split"]) == ("allenai/c4", "en", "train")
    pinned = default_spec("c4", samples=4, length=8).model_copy(deep=True)
    pinned.datasets[0].revision = "abc123"
    assert spec_fingerprint(pinned) != fp


def test_default_specs_name_the_papers_datasets():
    code = default_spec()
    assert code.datasets[0].source == "theblackcat102/evol-codealpaca-v1"
    assert (code.datasets[0].prompt_field, code.datasets[0].response_field) == ("instruction", "output")
    assert default_spec("writing").datasets[0].response_field == "body"
    assert default_spec("writing").datasets[0].prompt_template == WRITING_PROMPT_TEMPLATE
    assert WRITING_PROMPT_TEMPLATE.endswith("{prompt}") and "story" in WRITING_PROMPT_TEMPLATE
    assert default_spec("math").datasets[0].source == "allenai/tulu-3-sft-personas-math"
    assert CalibrationSpec.default("c4", samples=7, length=9).samples == 7
    with pytest.raises(ValueError, match="unknown calibration domain"):
        default_spec("poetry")


def test_hub_source_streams_only_what_it_needs(tok, monkeypatch):
    """The hub path with a stand-in `datasets` module: streaming, seeded shuffle, lazy reads."""
    calls, served = {}, []

    class Stream:
        def shuffle(self, seed, buffer_size):
            calls["shuffle"] = (seed, buffer_size)
            return self

        def __iter__(self):
            for r in code_records() * 100:
                served.append(r)
                yield r

    def load_dataset(name, subset, split, streaming, revision):
        calls["load"] = (name, subset, split, streaming, revision)
        return Stream()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    s = spec({"source": "someone/code-set", "subset": "py", "revision": "r1"}, samples=2, length=64, seed=5)
    batch = build_calibration_batch(s, tok)
    assert batch.input_ids.shape == (2, 64) and batch.sources == ["someone/code-set"] * 2
    assert calls["load"] == ("someone/code-set", "py", "train", True, "r1")
    assert calls["shuffle"][0] == 5
    assert len(served) <= 2  # 128 tokens need at most one record beyond the first


def test_hub_source_with_reap_repo_packing_draws_from_the_whole_split(tok, monkeypatch):
    """reap_repo loads the split (not streamed) and draws from all of it, as the paper's code does."""
    calls, read = {}, []
    records = code_records()

    class Split:
        def __len__(self):
            return len(records)

        def __getitem__(self, i):
            read.append(i)
            return records[i]

    def load_dataset(name, subset, split, revision):
        calls["load"] = (name, subset, split, revision)
        return Split()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    s = spec({"source": "someone/code-set", "revision": "r1"}, samples=2, length=200, packing="reap_repo", seed=3)
    batch = build_calibration_batch(s, tok)
    assert calls["load"] == ("someone/code-set", None, "train", "r1")
    assert read == reference_draws(len(records), 3)[: len(read)] and len(read) >= 3
    assert batch.input_ids[0, :10].tolist() == code_ids(tok)[read[0]][:10]


# --- errors --------------------------------------------------------------------------


def test_missing_file_is_named(tok, tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        build_calibration_batch(spec(missing, samples=2, length=8), tok)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        spec_fingerprint(spec(missing, samples=2, length=8))


def test_unsupported_file_type(tok, tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"unsupported type.*\.jsonl"):
        build_calibration_batch(spec(path, samples=1, length=4), tok)


def test_composite_counts_must_add_up():
    with pytest.raises(ValidationError, match="add up to 5 but samples \\(N\\) is 6"):
        spec({"source": str(CODE), "samples": 3}, {"source": str(CHAT), "samples": 2}, samples=6, length=8)
    with pytest.raises(ValidationError, match="needs `samples` on every dataset"):
        spec({"source": str(CODE), "samples": 3}, {"source": str(CHAT)}, samples=3, length=8)
    with pytest.raises(ValidationError, match="samples=4"):
        spec({"source": str(CODE), "samples": 4}, samples=6, length=8)
    with pytest.raises(ValidationError, match="extra"):
        CalibrationSpec(datasets=[{"source": str(CODE)}], samples=1, length=8, batch_size=4)


def test_not_enough_data_says_how_much(tok):
    # 30 records give about 4.6k tokens; 80 x 64 = 5120 are asked for.
    with pytest.raises(ValueError, match=r"30 records give \d+ tokens, but 80 rows x 64 tokens = 5120"):
        build_calibration_batch(spec(CODE, samples=80, length=64), tok)
    with pytest.raises(ValueError, match="only 30 non-empty records, but 31 rows"):
        build_calibration_batch(spec(CODE, samples=31, length=64, packing="pad"), tok)


def test_unknown_record_format(tok, tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text('{"foo": "x", "bar": "y"}\n' * 5)
    with pytest.raises(ValueError, match=r"cannot tell the record format from its fields \['bar', 'foo'\]"):
        build_calibration_batch(spec(path, samples=1, length=4), tok)
    with pytest.raises(ValueError, match="no field 'body'"):
        build_calibration_batch(
            spec(
                {"source": str(CODE), "prompt_field": "instruction", "response_field": "body"},
                samples=1,
                length=4,
            ),
            tok,
        )


def test_missing_chat_template_names_the_option(tmp_path):
    tok = build_tokenizer()
    tok.chat_template = None
    with pytest.raises(ValueError, match="apply_chat_template: false"):
        build_calibration_batch(spec(CODE, samples=1, length=8), tok)
    batch = build_calibration_batch(spec(CODE, samples=1, length=8, apply_chat_template=False), tok)
    assert batch.input_ids.shape == (1, 8)
