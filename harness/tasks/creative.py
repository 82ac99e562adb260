"""WildBench v2 creative writing, scored 1-10 by a judge model, rescaled to (s - 1) / 9.

Data: the rows of allenai/WildBench (config v2, split test) whose `primary_tag` is
"Creative Writing"; offline, a JSONL file in the same schema (`data_file`, or
`<data_dir>/wildbench/v2/test.jsonl`). The served model answers the conversation's
last user turn with the chat template; the judge (any OpenAI-compatible endpoint,
`ctx.judge`) reads WildBench's checklist score prompt and answers with a score.

How judge failures enter the score: a reply with no usable score is *excluded from
the mean* and counted (`n_judge_unparseable`, `judge_unparseable_fraction`, the
sample ids in provenance). Its sample record keeps the raw judge reply, has
`judge_parsed: false`, `excluded: true` and a placeholder score of 0 that consumers
of per-sample scores must skip. If more than `max_unparseable_fraction` of the
replies are unparseable (or none is usable), the task fails with `JudgeUnreliableError`,
which carries the partial result so its samples can still be written. An empty model
reply gets score 1 without asking the judge, as WildBench does.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from harness.tasks.base import GenerationSettings, SampleRecord, Task, TaskContext, TaskError, TaskResult
from harness.tasks.client import chat_many
from harness.tasks.judge import (
    EMPTY_OUTPUT_SCORE,
    TEMPLATE_FILE,
    build_judge_prompt,
    load_template,
    parse_judge_score,
    rescale,
)

HF_DATASET = ("allenai/WildBench", "v2", "test")
LOCAL_DATA_FILE = "wildbench/v2/test.jsonl"  # under the data directory, if a user exported it there
CREATIVE_TAG = "Creative Writing"


class JudgeUnreliableError(TaskError):
    """Too many judge replies had no usable score; `partial_result` keeps the samples."""

    def __init__(self, message: str, partial_result: TaskResult):
        super().__init__(message)
        self.partial_result = partial_result


class JudgeSettings(GenerationSettings):
    """Generation settings for the judge, plus fields merged into every judge request body
    (e.g. `response_format`, or vLLM's `structured_outputs`)."""

    extra_body: dict[str, Any] = Field(default_factory=dict)

    def request_fields(self) -> dict[str, Any]:
        return {**super().request_fields(), **self.extra_body}


class _Turn(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str


class WildBenchRow(BaseModel):
    """The fields of a WildBench v2 row this task reads (the others are kept, unused)."""

    model_config = ConfigDict(extra="allow")
    session_id: str
    conversation_input: list[_Turn] = Field(min_length=1)
    checklist: list[str]
    primary_tag: str


def read_rows(path: Path) -> list[WildBenchRow]:
    if not path.is_file():
        raise TaskError(f"WildBench data file {path} not found")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(WildBenchRow.model_validate_json(line))
            except ValueError as exc:
                raise TaskError(f"{path}:{number} is not a WildBench v2 row: {exc}") from exc
    return rows


class WildBenchCreative(Task):
    name = "wildbench_creative"
    category = "creative_writing"
    needs_judge = True

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        data_file: Path | None = None  # local JSONL in WildBench v2 schema (offline use)
        template_file: Path | None = None  # default: <data_dir>/wildbench/eval_template.score.v2.md, else upstream
        primary_tag: str = CREATIVE_TAG
        judge_max_tokens: int = Field(1024, ge=1)
        judge_temperature: float = Field(0.0, ge=0.0)
        judge_extra_body: dict[str, Any] = Field(default_factory=dict)
        # Not sent unless set: hosted judges reject unknown request fields.
        judge_chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
        max_unparseable_fraction: float = Field(0.2, ge=0.0, le=1.0)

    # -- inputs ------------------------------------------------------------------------
    def _data_path(self, data_dir: Path | None) -> Path | None:
        if self.options.data_file is not None:
            return Path(self.options.data_file)
        return data_dir / LOCAL_DATA_FILE if data_dir is not None else None

    def _template_path(self, data_dir: Path | None) -> Path | None:
        if self.options.template_file is not None:
            return Path(self.options.template_file)
        return data_dir / TEMPLATE_FILE if data_dir is not None else None

    def data_files(self, data_dir: Path) -> list[Path]:
        return [p for p in (self._data_path(data_dir), self._template_path(data_dir)) if p is not None]

    def check_ready(self, ctx: TaskContext) -> list[str]:
        problems = []
        if ctx.judge is None:
            problems.append(f"{self.name}: needs a judge endpoint (--judge-base-url and --judge-model)")
        return problems + self.check_data(ctx.data_dir)

    def check_data(self, data_dir: Path | None) -> list[str]:
        problems = []
        paths = [p for p in (self._data_path(data_dir), self._template_path(data_dir)) if p is not None]
        for path in paths:
            if not path.exists():
                hint = (" (WildBench prompts are not in the offline datasets: export allenai/WildBench v2 test "
                        "there, or set the task option data_file)") if path.name == "test.jsonl" else ""
                problems.append(f"{self.name}: missing data file {path}{hint}")
        return problems

    def load(self, ctx: TaskContext) -> tuple[list[WildBenchRow], list[Path], dict[str, Any]]:
        path = self._data_path(ctx.data_dir)
        if path is not None:
            return read_rows(path), [path], {"data_file": str(path)}
        from harness.tasks.math import hf_rows

        raw, source = hf_rows(*HF_DATASET)
        return [WildBenchRow.model_validate(r) for r in raw], [], source

    def judge_settings(self, ctx: TaskContext) -> JudgeSettings:
        o = self.options
        return JudgeSettings(temperature=o.judge_temperature, max_tokens=o.judge_max_tokens, seed=ctx.generation.seed,
                             chat_template_kwargs=o.judge_chat_template_kwargs, extra_body=o.judge_extra_body,
                             concurrency=ctx.generation.concurrency)

    # -- run -----------------------------------------------------------------------------
    def run(self, ctx: TaskContext) -> TaskResult:
        if ctx.judge is None:
            raise TaskError(f"{self.name} needs a judge endpoint (ctx.judge / --judge-base-url, --judge-model)")
        template_path = self._template_path(ctx.data_dir)
        template, template_source = load_template(template_path)
        all_rows, files, source = self.load(ctx)
        rows = [r for r in all_rows if r.primary_tag == self.options.primary_tag]
        n_tagged = len(rows)
        rows = rows[:ctx.limit] if ctx.limit is not None else rows
        if not rows:
            raise TaskError(f"{self.name}: no rows with primary_tag {self.options.primary_tag!r} "
                            f"among {len(all_rows)} rows")
        files = files + ([template_path] if template_path is not None else [])
        judge = self.judge_settings(ctx)
        provenance = {
            **self.base_provenance(ctx, files), **source,
            "n_rows": len(all_rows), "n_available": n_tagged,
            "judge_model": ctx.judge.model, "judge_base_url": ctx.judge.base_url,
            "judge_generation": judge.recorded(), "judge_template": template_source,
            "unparseable_policy": "excluded from the mean, counted (n_judge_unparseable)",
        }

        conversations = [[{"role": t.role, "content": t.content} for t in r.conversation_input] for r in rows]
        completions = chat_many(ctx.endpoint, conversations, ctx.generation, desc=self.name if ctx.progress else None)
        prompts = [build_judge_prompt(template, conv, c.text, r.checklist)
                   for conv, c, r in zip(conversations, completions, rows, strict=True)]
        to_judge = [i for i, c in enumerate(completions) if c.text.strip()]
        replies = chat_many(ctx.judge, [[{"role": "user", "content": prompts[i]}] for i in to_judge], judge,
                            desc=f"{self.name} judge" if ctx.progress else None)
        reply_of = dict(zip(to_judge, replies, strict=True))

        samples = []
        for i, (row, conv, comp) in enumerate(zip(rows, conversations, completions, strict=True)):
            reply = reply_of.get(i)
            raw = parse_judge_score(reply.text) if reply is not None else EMPTY_OUTPUT_SCORE
            samples.append(SampleRecord(
                sample_id=row.session_id, prompt=conv, output=comp.text, extracted=raw, target=row.checklist,
                score=rescale(raw) if raw is not None else 0.0, judge_parsed=raw is not None, excluded=raw is None,
                judge_reply=reply.text if reply is not None else None, judge_prompt=prompts[i],
                judge_finish_reason=reply.finish_reason if reply is not None else None,
                finish_reason=comp.finish_reason, completion_tokens=comp.completion_tokens,
            ))
        return self._result(samples, completions, provenance)

    def _result(self, samples: list[SampleRecord], completions: list[Any], provenance: dict[str, Any]) -> TaskResult:
        scored = [s for s in samples if not s.excluded]
        unparseable = [s.sample_id for s in samples if s.excluded]
        n = len(samples)
        metrics = {
            "n_judge_unparseable": float(len(unparseable)),
            "judge_unparseable_fraction": len(unparseable) / n,
            "n_scored": float(len(scored)),
            "n_empty_outputs": float(sum(s.judge_reply is None for s in samples)),
            "truncated_fraction": fmean(c.finish_reason == "length" for c in completions),
            "mean_completion_tokens": fmean(c.completion_tokens for c in completions),
        }
        provenance = {**provenance, "judge_unparseable_ids": unparseable}
        score = None
        if scored:
            score = fmean(s.score for s in scored)
            metrics["rescaled_score"] = score
            metrics["mean_judge_score"] = fmean(s.extracted for s in scored)
        result = TaskResult(task=self.name, category=self.category, score=score, metrics=metrics, n_samples=n,
                            samples=samples, provenance=provenance)
        too_many = len(unparseable) / n > self.options.max_unparseable_fraction
        if not scored or too_many:
            example = next(s.judge_reply for s in samples if s.excluded)
            raise JudgeUnreliableError(
                f"{self.name}: {len(unparseable)} of {n} judge replies had no usable 1-10 score "
                f"(allowed fraction {self.options.max_unparseable_fraction:g}); is {provenance['judge_model']!r} "
                f"a capable judge? First unparseable reply: {json.dumps((example or '')[:300])}", result)
        return result
