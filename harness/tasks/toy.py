"""The toy task suite: held-out items of the synthetic corpus the toy MoE was trained on.

Same machinery as the real benchmarks, so a toy sweep exercises the whole path:

* toy_math: chat generation, the final number extracted ("The answer is N", else the
  last integer) and compared with the gold integer;
* toy_coding: chat generation, the code block executed in the sandbox with the item's
  held-out asserts; pass@1;
* toy_mc: lm-eval `local-completions` log-likelihood of each choice after
  "Question: ...\\nAnswer:"; acc (chance 1/4);
* toy_creative: chat generation judged by a judge endpoint (`ctx.judge`, else a local
  deterministic rubric judge started for the run), rescaled (s - 1) / 9 as WildBench.

Data: `<domain>.jsonl` written by harness.standins.toy.corpus, by default the copy committed with
the model (models/toy-moe/data); option `data_file` points elsewhere.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from statistics import fmean
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from harness.tasks.base import SampleRecord, Task, TaskContext, TaskError, TaskResult

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO / "models" / "toy-moe" / "data"
CODE_TIMEOUT_S = 10.0


# -- scoring (shared with the in-process evaluator, harness.standins.toy.evaluate) ---------------------
_ANSWER = re.compile(r"answer is\s*(-?\d+)", re.IGNORECASE)
_INTEGER = re.compile(r"-?\d+")
_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def extract_number(text: str) -> int | None:
    """The final answer: the number after "The answer is", else the last integer in the text."""
    found = _ANSWER.findall(text)
    if found:
        return int(found[-1])
    numbers = _INTEGER.findall(text)
    return int(numbers[-1]) if numbers else None


def score_math(output: str, answer: int) -> tuple[int | None, float]:
    extracted = extract_number(output)
    return extracted, float(extracted == int(answer))


def extract_code(text: str) -> str:
    """The first fenced code block; an unfenced reply (or an unclosed fence) is taken as code."""
    found = _FENCE.search(text)
    if found:
        return found.group(1)
    return re.sub(r"^```(?:python|py)?\s*\n", "", text.strip())


def coding_program(code: str, tests: list[str]) -> str:
    return code.rstrip() + "\n\n" + "\n".join(tests) + "\n"


def score_coding(outputs: list[str], items: list[dict[str, Any]], timeout_s: float = CODE_TIMEOUT_S
                 ) -> list[tuple[str, float, str]]:
    """(code, 1.0 if every held-out assert passes else 0.0, failure detail) per output, in the sandbox."""
    from harness.sandbox.api import clip_output, run_python

    scored = []
    for output, item in zip(outputs, items, strict=True):
        code = extract_code(output)
        result = run_python(coding_program(code, item["tests"]), timeout_s=timeout_s)
        passed = result.returncode == 0 and not result.timed_out
        detail = "" if passed else ("timeout" if result.timed_out else clip_output(result.stderr or ""))
        scored.append((code, float(passed), detail))
    return scored


def mc_choice_continuations(item: dict[str, Any]) -> list[str]:
    """What lm-eval scores after the context: the target delimiter " " and the choice."""
    return [" " + choice for choice in item["choices"]]


# -- data ------------------------------------------------------------------------------------
class ToyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_file: str | None = None  # default: models/toy-moe/data/<domain>.jsonl


class _ToyTask(Task):
    domain: ClassVar[str]
    Options = ToyOptions

    def data_path(self) -> Path:
        return Path(self.options.data_file) if self.options.data_file else DEFAULT_DATA_DIR / f"{self.domain}.jsonl"

    def check_data(self, data_dir: Path | None) -> list[str]:
        path = self.data_path()
        return [] if path.is_file() else [f"{self.name}: data file {path} not found (write it with "
                                          "harness.standins.toy.corpus.write_eval_data, or set the data_file option)"]

    def load(self, ctx: TaskContext) -> list[dict[str, Any]]:
        from harness.standins.toy.corpus import read_eval_items

        problems = self.check_ready(ctx)
        if problems:
            raise TaskError("; ".join(problems))
        items = read_eval_items(self.data_path())
        return items[:ctx.limit] if ctx.limit is not None else items

    def provenance(self, ctx: TaskContext, **extra: Any) -> dict[str, Any]:
        found = self.base_provenance(ctx, [self.data_path()])
        found.update(extra)
        return found

    def _generate(self, ctx: TaskContext, items: list[dict[str, Any]]) -> list[str]:
        """The replies' texts; their finish reasons and token counts are kept in `self._completions`
        (recorded per sample, so a reply cut at max_tokens can be told apart: harness.tasks.failures)."""
        from harness.tasks.client import chat_many

        conversations = [[{"role": "user", "content": item["question"]}] for item in items]
        desc = self.name if ctx.progress else None
        self._completions = chat_many(ctx.endpoint, conversations, ctx.generation, desc=desc)
        return [c.text for c in self._completions]

    def _finish(self, index: int) -> dict[str, Any]:
        """finish_reason and completion_tokens of the index-th reply of the last `_generate`."""
        c = self._completions[index]
        return {"finish_reason": c.finish_reason, "completion_tokens": c.completion_tokens}

    def _result(self, ctx: TaskContext, samples: list[SampleRecord], **extra: Any) -> TaskResult:
        if not samples:
            raise TaskError(f"{self.name}: no samples to score")
        score = fmean(s.score for s in samples)
        return TaskResult(task=self.name, category=self.category, score=score, metrics={"accuracy": score},
                          n_samples=len(samples), samples=samples, provenance=self.provenance(ctx, **extra))


class ToyMath(_ToyTask):
    name = "toy_math"
    category = "math"
    domain = "math"
    answer_failure_kinds = ("no_answer",)

    @classmethod
    def answer_failures(cls, record: SampleRecord) -> list[str]:
        return ["no_answer"] if record.extracted is None else []

    def run(self, ctx: TaskContext) -> TaskResult:
        items = self.load(ctx)
        outputs = self._generate(ctx, items)
        samples = []
        for i, (item, output) in enumerate(zip(items, outputs, strict=True)):
            extracted, score = score_math(output, item["answer"])
            samples.append(SampleRecord(sample_id=item["id"], prompt=item["question"], output=output,
                                        extracted=extracted, target=item["answer"], score=score, **self._finish(i)))
        return self._result(ctx, samples)


class ToyCoding(_ToyTask):
    name = "toy_coding"
    category = "coding"
    domain = "coding"
    answer_failure_kinds = ("no_code", "syntax_error", "no_entry_point")

    @classmethod
    def answer_failures(cls, record: SampleRecord) -> list[str]:
        from harness.tasks.failures import code_failures

        return code_failures(record.extracted, (record.model_extra or {}).get("entry_point"))

    def run(self, ctx: TaskContext) -> TaskResult:
        items = self.load(ctx)
        outputs = self._generate(ctx, items)
        samples = [
            SampleRecord(sample_id=item["id"], prompt=item["question"], output=output, extracted=code,
                         target=item["tests"], score=score, failure=detail, entry_point=item.get("entry_point"),
                         **self._finish(i))
            for i, (item, output, (code, score, detail))
            in enumerate(zip(items, outputs, score_coding(outputs, items), strict=True))
        ]
        result = self._result(ctx, samples, sandbox_timeout_s=CODE_TIMEOUT_S)
        result.metrics = {"pass@1": result.score}
        return result


class ToyCreative(_ToyTask):
    """Stories judged against their constraints; the judge replies in WildBench's format."""

    name = "toy_creative"
    category = "creative_writing"
    needs_judge = True
    domain = "creative"

    def run(self, ctx: TaskContext) -> TaskResult:
        from harness.tasks.client import chat_many
        from harness.tasks.judge import parse_judge_score, rescale
        from harness.tasks.rubric_judge import RubricJudge, build_judge_prompt

        items = self.load(ctx)
        outputs = self._generate(ctx, items)
        prompts = [[{"role": "user", "content": build_judge_prompt(out, item["constraints"])}]
                   for item, out in zip(items, outputs, strict=True)]
        from harness.tasks.base import GenerationSettings

        settings = GenerationSettings(temperature=0.0, max_tokens=512, chat_template_kwargs={},
                                      concurrency=ctx.generation.concurrency)
        if ctx.judge is not None:
            judge_name, replies = ctx.judge.model, chat_many(ctx.judge, prompts, settings)
        else:
            with RubricJudge() as judge:
                judge_name, replies = "local rubric judge", chat_many(judge.endpoint(), prompts, settings)
        samples = []
        for i, (item, output, reply) in enumerate(zip(items, outputs, replies, strict=True)):
            raw = parse_judge_score(reply.text)
            if raw is None:
                raise TaskError(f"{self.name} {item['id']}: the judge's reply has no 1-10 score: {reply.text[:300]!r}")
            samples.append(SampleRecord(sample_id=item["id"], prompt=item["question"], output=output,
                                        extracted=raw, target=item["constraints"], score=rescale(raw),
                                        judge_reply=reply.text, **self._finish(i)))
        result = self._result(ctx, samples, judge=judge_name)
        result.metrics = {"rescaled_score": result.score,
                          "mean_judge_score": fmean(float(s.extracted) for s in samples)}
        return result


class ToyMCOptions(ToyOptions):
    batch_size: int = Field(1, ge=1)  # prompts per HTTP request (does not change scores)


class ToyMC(_ToyTask):
    """lm-eval multiple choice over the toy fact base, from a task YAML written at run time."""

    name = "toy_mc"
    category = "mc"
    domain = "mc"
    Options = ToyMCOptions

    def check_ready(self, ctx: TaskContext) -> list[str]:
        problems = super().check_ready(ctx)
        if not ctx.endpoint.tokenizer:
            problems.append(f"{self.name}: lm-eval needs the model's tokenizer (Endpoint.tokenizer)")
        return problems

    def task_config(self, data_file: Path, cache_dir: Path) -> dict[str, Any]:
        """The lm-eval task: context, choices and gold index are fields of the JSONL rows."""
        return {
            "task": self.name,
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {"test": str(data_file.resolve())}, "cache_dir": str(cache_dir)},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "context",
            "doc_to_choice": "choices",
            "doc_to_target": "gold",
            "target_delimiter": " ",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0},
        }

    def run(self, ctx: TaskContext) -> TaskResult:
        from lm_eval.evaluator import evaluate
        from lm_eval.tasks import TaskManager

        from harness.tasks.mc import (
            DEFAULT_MAX_LENGTH,
            NUM_FEWSHOT,
            MCOptions,
            make_lm,
            sample_records,
            server_max_model_len,
            task_metrics,
            write_yamls,
        )

        problems = self.check_ready(ctx)
        if problems:
            raise TaskError("; ".join(problems))
        if ctx.work_dir is not None:
            Path(ctx.work_dir).mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="harness-toy-mc-", dir=ctx.work_dir))
        try:
            task_dir = scratch / "tasks"
            yaml_hashes = write_yamls(task_dir, {self.name: self.task_config(self.data_path(), scratch / "hf")})
            max_length = server_max_model_len(ctx) or DEFAULT_MAX_LENGTH
            try:
                loaded = TaskManager(include_path=str(task_dir), include_defaults=False).load([self.name])
                for task in loaded["tasks"].values():
                    task.set_config(key="num_fewshot", value=NUM_FEWSHOT)
                lm = make_lm(ctx, MCOptions(batch_size=self.options.batch_size), max_length)
                raw = evaluate(lm=lm, task_dict=loaded, limit=ctx.limit, log_samples=True)
            except Exception as exc:
                raise TaskError(f"{self.name}: lm-eval failed against {ctx.endpoint.base_url}: "
                                f"{type(exc).__name__}: {exc}") from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if raw is None:
            raise TaskError(f"{self.name}: lm-eval returned no results")
        records = sample_records(raw, loaded["tasks"], "acc", self.name)
        metrics = task_metrics(raw, self.name)
        if "acc" not in metrics:
            raise TaskError(f"{self.name}: lm-eval reported no acc (got {sorted(metrics)})")
        return TaskResult(task=self.name, category=self.category, score=metrics["acc"], metrics=metrics,
                          n_samples=len(records), samples=records,
                          provenance=self.provenance(ctx, lm_eval_model="local-completions", num_fewshot=NUM_FEWSHOT,
                                                     task_yaml_sha256=yaml_hashes, max_length=max_length,
                                                     chance=1 / 4))
