"""Calibration data -> token batches.

Records from a local file or a Hugging Face dataset become chat-templated token
sequences, packed into N rows of L tokens (docs/architecture.md). Everything that
changes the tokens lives in `CalibrationSpec`, and `spec_fingerprint` turns it into the
calibration part of the cache key. Validating a spec or fingerprinting it does not
import torch, transformers or `datasets`.

Packing modes (`CalibrationSpec.packing`):

* `concat`: records in seeded order (local files fully shuffled; hub datasets streamed
  through a shuffle buffer of HF_SHUFFLE_BUFFER records), joined by eos into one stream
  that is cut into rows, so most rows start inside a record;
* `pad`: one record per row, cut at L, padded (masked) to L;
* `reap_repo`: as the paper's repository (`reap/data.py`, the packed branch of its
  dataset processor): records are drawn uniformly without replacement from the whole
  dataset (seeded `random.Random(seed).randint` over the record indices, a repeated index
  drawn again, the reference's procedure; hub datasets are loaded whole, not streamed),
  every row starts with the first token of a freshly drawn record, records follow one
  another with one masked position between them (the reference leaves that gap), and
  the record that overflows the row is cut there, its remainder dropped.

Tokens: chat-templated text is tokenised without the tokenizer's own special tokens,
since the template already holds the ones the model expects (so a tokenizer that adds a
BOS on its own does not put a second one after the template's); plain text (and turns
joined with `apply_chat_template: false`) gets the tokenizer's own special tokens (its
BOS, if it adds one), as a served completion request would. (The reference tokenises
templated text with the tokenizer's specials too, giving such tokenizers two BOS.)
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, PositiveInt, model_validator

if TYPE_CHECKING:
    import torch

# Bump when the way records become tokens changes: it is part of the fingerprint.
# 2: plain text gets the tokenizer's own special tokens (BOS).
CALIBRATION_FORMAT_VERSION = 2

LOCAL_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet")
# Streaming datasets are shuffled through a buffer of this many records (a full shuffle
# would download the whole dataset).
HF_SHUFFLE_BUFFER = 10_000

MESSAGE_FIELDS = ("messages", "conversations")
# (prompt, answer) field pairs, tried in this order when the format is auto-detected.
PAIR_FIELDS = (
    ("instruction", "output"),
    ("prompt", "response"),
    ("prompt", "completion"),
    ("question", "answer"),
    ("prompt", "body"),  # euclaise/WritingPrompts_curated stores the story in `body`
    ("prompt", "story"),
    ("problem", "solution"),
)
TEXT_FIELDS = ("text", "content")
# ShareGPT-style conversations use from/value and these role names.
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "model": "assistant", "bot": "assistant"}

RecordFormat = Literal["messages", "prompt_response", "text"]
Packing = Literal["concat", "pad", "reap_repo"]
PROMPT_PLACEHOLDER = "{prompt}"
Messages = list[dict[str, str]]
Sample = Messages | str  # a conversation to chat-template, or plain text


class DatasetSpec(BaseModel):
    """One calibration source and how to read its records."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, description="local .json/.jsonl(.gz)/.parquet file or HF dataset name")
    subset: str | None = None
    split: str = "train"
    revision: str | None = Field(default=None, description="HF dataset revision, pins the data")
    samples: PositiveInt | None = Field(default=None, description="rows this dataset contributes")
    format: RecordFormat | None = None
    prompt_field: str | None = None
    response_field: str | None = None
    text_field: str | None = None
    prompt_template: str | None = Field(
        default=None,
        description="prompt/response records only: the user turn is this text with {prompt} replaced by the "
                    "record's prompt (e.g. an instruction before a WritingPrompts prompt)",
    )

    @model_validator(mode="after")
    def _fields_consistent(self) -> DatasetSpec:
        if self.prompt_template is not None:
            if self.prompt_template.count(PROMPT_PLACEHOLDER) != 1:
                raise ValueError(f"{self.source}: prompt_template must contain {PROMPT_PLACEHOLDER} exactly once, "
                                 f"got {self.prompt_template!r}")
            if self.text_field or self.format in ("text", "messages"):
                raise ValueError(f"{self.source}: prompt_template applies to prompt/response records only")
        if (self.prompt_field is None) != (self.response_field is None):
            raise ValueError(f"{self.source}: give prompt_field and response_field together")
        if self.prompt_field and self.text_field:
            raise ValueError(f"{self.source}: give either prompt/response fields or text_field, not both")
        implied = "prompt_response" if self.prompt_field else "text" if self.text_field else None
        if self.format and implied and self.format != implied:
            raise ValueError(f"{self.source}: format {self.format!r} does not match the field overrides")
        return self

    @property
    def is_local(self) -> bool:
        """A file path (by suffix, existence or an explicit path prefix) rather than a hub name."""
        return (
            self.source.endswith(LOCAL_SUFFIXES)
            or self.source.startswith(("/", "./", "../", "~"))
            or Path(self.source).expanduser().exists()
        )


# CalibrationSpec fields that decide where the work runs, not the tokens: left out of the key.
UNKEYED_FIELDS = {"device"}


class CalibrationSpec(BaseModel):
    """Which records, how many rows, how long, how packed: all that decides the tokens."""

    model_config = ConfigDict(extra="forbid")

    datasets: list[DatasetSpec] = Field(min_length=1)
    samples: PositiveInt = Field(description="N, the number of rows")
    length: PositiveInt = Field(description="L, tokens per row")
    packing: Packing = Field(default="concat", description="concat | pad | reap_repo (module docstring)")
    seed: int = 0
    apply_chat_template: bool = True
    chat_template_kwargs: dict[str, JsonValue] = Field(default_factory=dict)
    # Whose routing the statistics record: the model's own ("model"), or what the paper's public code
    # records for every family ("reap_repo": top-k of raw logits, softmax weights; see the observer).
    routing: Literal["model", "reap_repo"] = "model"
    # Where calibration runs: "auto" (every visible GPU, else the CPU), "cpu", "cuda" (every visible
    # GPU) or "cuda:N". Not part of the key: the statistics do not depend on it.
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")

    @model_validator(mode="after")
    def _counts_add_up(self) -> CalibrationSpec:
        if len(self.datasets) == 1:
            given = self.datasets[0].samples
            if given is not None and given != self.samples:
                raise ValueError(f"the only dataset has samples={given} but samples (N) is {self.samples}")
            return self
        missing = [d.source for d in self.datasets if d.samples is None]
        if missing:
            raise ValueError(f"a composite spec needs `samples` on every dataset; missing on {missing}")
        total = sum(d.samples or 0 for d in self.datasets)
        if total != self.samples:
            raise ValueError(
                f"dataset samples add up to {total} but samples (N) is {self.samples}; make them equal"
            )
        return self

    def rows_per_dataset(self) -> list[int]:
        """How many rows each dataset contributes (a lone dataset without `samples` gives all N)."""
        return [d.samples or self.samples for d in self.datasets]

    @classmethod
    def default(cls, domain: str = "code", samples: int = 1024, length: int = 2048) -> CalibrationSpec:
        return default_spec(domain, samples=samples, length=length)


# The paper's calibration domains. Field names checked against public loaders of these
# datasets; evol-codealpaca has instruction/output, WritingPrompts_curated prompt/body,
# tulu personas math a `messages` list, c4 `text`. The paper's own loader also puts a
# one-sentence instruction to write a story before each WritingPrompts prompt; ours says
# the same in our own words (WRITING_PROMPT_TEMPLATE). For token-identical calibration, set
# `prompt_template` to the reference's sentence (`reap/data.py`, WritingPromptsChatDataset)
# with {prompt} where the prompt goes.
WRITING_PROMPT_TEMPLATE = "Write a creative story based on this writing prompt:\n\n{prompt}"
DEFAULT_DATASETS: dict[str, dict[str, Any]] = {
    "code": {
        "source": "theblackcat102/evol-codealpaca-v1",
        "prompt_field": "instruction",
        "response_field": "output",
    },
    "c4": {"source": "allenai/c4", "subset": "en", "text_field": "text"},
    "writing": {
        "source": "euclaise/WritingPrompts_curated",
        "prompt_field": "prompt",
        "response_field": "body",
        "prompt_template": WRITING_PROMPT_TEMPLATE,
    },
    "math": {"source": "allenai/tulu-3-sft-personas-math", "format": "messages"},
}


def default_spec(domain: str = "code", samples: int = 1024, length: int = 2048) -> CalibrationSpec:
    """The paper's calibration set for `domain` (1024 samples; the 2048-token length is the
    paper repository's default as far as we could tell, not a number stated in the paper)."""
    if domain not in DEFAULT_DATASETS:
        raise ValueError(f"unknown calibration domain {domain!r}; choose one of {sorted(DEFAULT_DATASETS)}")
    return CalibrationSpec(datasets=[DatasetSpec(**DEFAULT_DATASETS[domain])], samples=samples, length=length)


@dataclass(frozen=True)
class CalibrationBatch:
    """N rows of L tokens, with the mask of real tokens and the dataset each row came from."""

    input_ids: torch.Tensor  # [N, L] int64
    attention_mask: torch.Tensor  # [N, L] int64, 0 on padding
    sources: list[str]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive (input_ids, attention_mask) slices of at most `batch_size` rows."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield self.input_ids[start:stop], self.attention_mask[start:stop]


# --- fingerprint ---------------------------------------------------------------------


def spec_fingerprint(spec: CalibrationSpec) -> dict[str, Any]:
    """JSON-able settings that decide the tokens: the whole spec, resolved row counts, and a
    local file's sha256 instead of its path (an edited file changes the key, a moved one
    does not). Hub datasets are keyed by name/subset/split/revision; without a revision an
    upstream change goes unnoticed. The tokenizer is not included: key it with the model."""
    data = spec.model_dump(mode="json", exclude=UNKEYED_FIELDS)
    data["format_version"] = CALIBRATION_FORMAT_VERSION
    for entry, ds, rows in zip(data["datasets"], spec.datasets, spec.rows_per_dataset(), strict=True):
        entry["samples"] = rows
        if ds.is_local:
            path = _local_path(ds)
            entry["source"] = path.name
            entry["sha256"] = _sha256(path)
    return data


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- loading -------------------------------------------------------------------------


def _local_path(ds: DatasetSpec) -> Path:
    path = Path(ds.source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"calibration data file {str(path)!r} not found (relative to {Path.cwd()}); "
            "fix `source` in the calibration spec, or give a Hugging Face dataset name"
        )
    if not path.name.endswith(LOCAL_SUFFIXES):
        raise ValueError(
            f"calibration data file {str(path)!r} has an unsupported type; "
            f"convert it to one of {', '.join(LOCAL_SUFFIXES)}"
        )
    return path


def _local_records(ds: DatasetSpec) -> list[dict]:
    path = _local_path(ds)
    if path.name.endswith(".parquet"):
        import pandas as pd

        return pd.read_parquet(path).to_dict(orient="records")
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        records = _json_lines(text, path)
    else:
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError:
            records = _json_lines(text, path)  # a .json file holding JSON lines
        else:
            if isinstance(loaded, dict) and isinstance(loaded.get(ds.split), list):
                loaded = loaded[ds.split]
            if not isinstance(loaded, list):
                raise ValueError(
                    f"{path}: expected a JSON list of records (or {{{ds.split!r}: [...]}}), "
                    f"got {type(loaded).__name__}"
                )
            records = loaded
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise ValueError(f"{path}: record {bad} is a {type(records[bad]).__name__}, not a JSON object")
    return records


def _json_lines(text: str, path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not valid JSON ({err.msg})") from err
    return records


def _datasets(ds: DatasetSpec) -> Any:
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"calibration source {ds.source!r} is a Hugging Face dataset and needs the `datasets` "
            "package (pip install datasets), or give a local file"
        ) from err
    return datasets


def _hf_records(ds: DatasetSpec, seed: int) -> Iterator[dict]:
    """Stream the dataset so that only the records actually used are downloaded."""
    stream = _datasets(ds).load_dataset(ds.source, ds.subset, split=ds.split, streaming=True, revision=ds.revision)
    yield from stream.shuffle(seed=seed, buffer_size=HF_SHUFFLE_BUFFER)


def _hf_dataset(ds: DatasetSpec) -> Any:
    """The whole split, loaded (not streamed): `reap_repo` draws from all of its records."""
    return _datasets(ds).load_dataset(ds.source, ds.subset, split=ds.split, revision=ds.revision)


def _uniform_draws(records: Any, seed: int) -> Iterator[dict]:
    """Records drawn uniformly without replacement, the reference's way: random indices from a
    seeded `random.Random`, an index already drawn is drawn again, until every record was drawn."""
    rng = random.Random(seed)
    n = len(records)
    drawn: set[int] = set()
    while len(drawn) < n:
        i = rng.randint(0, n - 1)
        if i in drawn:
            continue
        drawn.add(i)
        yield records[i]


def _records(ds: DatasetSpec, seed: int, packing: str = "concat") -> Iterator[dict]:
    """Records in the seeded order in which they are selected."""
    if packing == "reap_repo":
        yield from _uniform_draws(_local_records(ds) if ds.is_local else _hf_dataset(ds), seed)
        return
    if not ds.is_local:
        yield from _hf_records(ds, seed)
        return
    records = _local_records(ds)
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    yield from (records[i] for i in order)


# --- records -> samples --------------------------------------------------------------


def _text(value: Any) -> str | None:
    """A non-empty string, or None (pandas gives NaN for missing values)."""
    return value if isinstance(value, str) and value.strip() else None


def _messages(value: Any) -> Messages | None:
    if value is None or isinstance(value, (str, float)):
        return None
    out = []
    for message in list(value):
        if not isinstance(message, dict):
            raise ValueError(f"a message must be a {{role, content}} object, got {message!r:.80}")
        role = message.get("role", message.get("from"))
        content = message.get("content", message.get("value"))
        text = content if isinstance(content, str) else ""  # e.g. None on a tool-call turn
        out.append({"role": ROLE_ALIASES.get(role, role), "content": text})
    return out or None


def _reader(ds: DatasetSpec, first: dict) -> Callable[[dict], Sample | None]:
    """Turn records into samples, with the format fixed from the first record's fields."""
    fields = sorted(first)

    def need(name: str) -> str:
        if name not in first:
            raise ValueError(
                f"calibration dataset {ds.source!r}: no field {name!r}; its records have {fields}"
            )
        return name

    fmt = ds.format or ("prompt_response" if ds.prompt_field else "text" if ds.text_field else None)
    if fmt is None:
        if any(f in first for f in MESSAGE_FIELDS):
            fmt = "messages"
        elif any(p in first and r in first for p, r in PAIR_FIELDS):
            fmt = "prompt_response"
        elif any(f in first for f in TEXT_FIELDS):
            fmt = "text"
        else:
            raise ValueError(
                f"calibration dataset {ds.source!r}: cannot tell the record format from its fields "
                f"{fields}; set `format` ('messages' | 'prompt_response' | 'text') and the field names "
                "(`prompt_field` + `response_field`, or `text_field`)"
            )

    if ds.prompt_template is not None and fmt != "prompt_response":
        raise ValueError(f"calibration dataset {ds.source!r}: prompt_template applies to prompt/response "
                         f"records, but its records are {fmt!r}")
    if fmt == "messages":
        key = need(next((f for f in MESSAGE_FIELDS if f in first), MESSAGE_FIELDS[0]))
        return lambda record: _messages(record.get(key))
    if fmt == "text":
        key = need(ds.text_field or next((f for f in TEXT_FIELDS if f in first), TEXT_FIELDS[0]))
        return lambda record: _text(record.get(key))

    if ds.prompt_field and ds.response_field:
        prompt_key, answer_key = need(ds.prompt_field), need(ds.response_field)
    else:
        pair = next(((p, r) for p, r in PAIR_FIELDS if p in first and r in first), None)
        if pair is None:
            raise ValueError(
                f"calibration dataset {ds.source!r}: no prompt/answer fields among {fields}; "
                "set `prompt_field` and `response_field`"
            )
        prompt_key, answer_key = pair

    def to_messages(record: dict) -> Messages | None:
        prompt, answer = _text(record.get(prompt_key)), _text(record.get(answer_key))
        if prompt is None or answer is None:
            return None
        extra = _text(record.get("input")) if prompt_key == "instruction" else None  # Alpaca's input
        if extra:
            prompt = f"{prompt}\n\n{extra}"
        if ds.prompt_template is not None:
            prompt = ds.prompt_template.replace(PROMPT_PLACEHOLDER, prompt)
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]

    return to_messages


def _samples(ds: DatasetSpec, seed: int, packing: str = "concat") -> Iterator[Sample]:
    """Non-empty samples of one dataset, in selection order."""
    records = _records(ds, seed, packing)
    first = next(records, None)
    if first is None:
        return
    read = _reader(ds, first)
    for record in itertools.chain([first], records):
        sample = read(record)
        if sample:
            yield sample


# --- samples -> tokens ---------------------------------------------------------------


def _encoder(spec: CalibrationSpec, tokenizer: Any) -> Callable[[Sample], list[int]]:
    """Chat-template conversations (answer included, no generation prompt) and tokenise
    without adding special tokens: the template already holds the ones the model expects.
    Plain text is tokenised with the tokenizer's own special tokens (its BOS, if any)."""
    if spec.apply_chat_template and not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"tokenizer {name!r} has no chat template; use a chat model's tokenizer, or set "
            "`apply_chat_template: false` in the calibration spec to use plain text"
        )

    def encode(sample: Sample) -> list[int]:
        if isinstance(sample, str):
            text, templated = sample, False  # plain text is never chat-templated
        elif spec.apply_chat_template:
            text, templated = tokenizer.apply_chat_template(
                sample, tokenize=False, add_generation_prompt=False, **spec.chat_template_kwargs
            ), True
        else:
            text, templated = "\n\n".join(m["content"] for m in sample), False
        return list(tokenizer(text, add_special_tokens=not templated)["input_ids"])

    return encode


def _concat_rows(
    encoded: Iterable[list[int]], rows: int, length: int, eos_id: int, label: str
) -> list[list[int]]:
    """Join samples with eos between them and cut the stream into rows (no padding)."""
    need = rows * length
    stream: list[int] = []
    used = 0
    for ids in encoded:
        if not ids:
            continue
        if stream:
            stream.append(eos_id)
        stream.extend(ids)
        used += 1
        if len(stream) >= need:
            break
    if len(stream) < need:
        raise ValueError(
            f"calibration dataset {label!r}: {used} records give {len(stream)} tokens, but {rows} rows "
            f"x {length} tokens = {need} are needed; lower samples/length or add data"
        )
    return [stream[i * length : (i + 1) * length] for i in range(rows)]


def _reap_repo_rows(
    encoded: Iterable[list[int]], rows: int, length: int, pad_id: int, label: str
) -> list[tuple[list[int], list[int]]]:
    """(ids, mask) rows as the paper's repository packs them: each row starts with a fresh
    record; records follow with one masked position after each; the record that overflows
    is cut at the row's end and the rest of it dropped."""
    samples = (ids for ids in encoded if ids)
    out: list[tuple[list[int], list[int]]] = []
    used = 0
    for _ in range(rows):
        ids, mask, pos = [pad_id] * length, [0] * length, 0
        while pos < length:
            sample = next(samples, None)
            if sample is None:
                raise ValueError(
                    f"calibration dataset {label!r}: its {used} non-empty records fill only {len(out)} of "
                    f"{rows} rows of {length} tokens with packing='reap_repo' (every record is used once); "
                    "lower samples/length or add data"
                )
            used += 1
            piece = sample[: length - pos]
            ids[pos : pos + len(piece)] = piece
            mask[pos : pos + len(piece)] = [1] * len(piece)
            pos += len(piece) + 1  # the reference leaves one masked position after each record
        out.append((ids, mask))
    return out


def _pad_rows(encoded: Iterable[list[int]], rows: int, length: int, label: str) -> list[list[int]]:
    """One sample per row, truncated to `length` (padding is added by the caller)."""
    out = []
    for ids in encoded:
        if ids:
            out.append(ids[:length])
            if len(out) == rows:
                return out
    raise ValueError(
        f"calibration dataset {label!r}: only {len(out)} non-empty records, but {rows} rows are needed "
        "with packing='pad'; lower samples or add data"
    )


def _dataset_rows(spec: CalibrationSpec, ds: DatasetSpec, rows: int, encode: Callable[[Sample], list[int]],
                  eos_id: int | None, pad_id: int) -> list[tuple[list[int], list[int]]]:
    """The (ids, mask) rows of `spec.length` one dataset contributes; ValueError when it cannot fill them."""
    length = spec.length
    encoded = (encode(sample) for sample in _samples(ds, spec.seed, spec.packing))
    if spec.packing == "reap_repo":
        return _reap_repo_rows(encoded, rows, length, pad_id, ds.source)
    if spec.packing == "concat":
        block = _concat_rows(encoded, rows, length, eos_id, ds.source)
    else:
        block = _pad_rows(encoded, rows, length, ds.source)
    return [(ids + [pad_id] * (length - len(ids)), [1] * len(ids) + [0] * (length - len(ids))) for ids in block]


def data_problems(spec: CalibrationSpec, tokenizer: Any) -> list[str]:
    """Why the spec's local datasets cannot fill their rows, found by packing them (no tensors, no model);
    [] when they can. Hub datasets are not read here: they are checked when calibration loads them."""
    try:
        encode = _encoder(spec, tokenizer)
    except ValueError as exc:
        return [str(exc)]
    problems = []
    for ds, rows in zip(spec.datasets, spec.rows_per_dataset(), strict=True):
        if ds.is_local:
            try:
                _dataset_rows(spec, ds, rows, encode, tokenizer.eos_token_id, tokenizer.pad_token_id or 0)
            except (ValueError, FileNotFoundError) as exc:
                problems.append(str(exc))
    return problems


def build_calibration_batch(spec: CalibrationSpec, tokenizer: Any) -> CalibrationBatch:
    """The token batch for `spec`; the same spec and tokenizer always give the same tensors."""
    import torch

    encode = _encoder(spec, tokenizer)
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id or 0
    if spec.packing == "concat" and eos_id is None:
        raise ValueError("packing='concat' separates samples with the eos token, but the tokenizer has none")

    ids_rows: list[list[int]] = []
    mask_rows: list[list[int]] = []
    sources: list[str] = []
    for ds, rows in zip(spec.datasets, spec.rows_per_dataset(), strict=True):
        for ids, mask in _dataset_rows(spec, ds, rows, encode, eos_id, pad_id):
            ids_rows.append(ids)
            mask_rows.append(mask)
        sources.extend([ds.source] * rows)
    return CalibrationBatch(
        input_ids=torch.tensor(ids_rows, dtype=torch.long),
        attention_mask=torch.tensor(mask_rows, dtype=torch.long),
        sources=sources,
    )
