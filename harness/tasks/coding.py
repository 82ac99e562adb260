"""HumanEval+ and MBPP+ (EvalPlus): chat generation, evalplus's checker inside our sandbox.

Generation follows evalplus's OpenAI-chat backend (`evalplus.codegen` + `provider/openai`):
a system message, then evalplus's instruction followed by the problem prompt in a
```python block; the answer is the model's whole reply, reduced by `evalplus.sanitize` itself
(longest span of lines that parses, then tree-sitter keeps the imports and the definitions
the entry point reaches; only its span search is swapped for `extract_code`, which picks
the same span without evalplus's cubic cost). Scoring is evalplus's own per-test checker
(`evalplus.eval.unsafe_execute`: its special oracles, float tolerance, per-input time
limits = max(1 s, 4 x the canonical solution's time), 4 GiB memory guard), called inside
`harness.sandbox.api.run_python` rather than in evalplus's forked child, because evalplus's own
`reliability_guard` leaves the network open and the filesystem writable. Each
(solution, base|plus) pair is one sandboxed process, as in evalplus; it may start up to
`CHECKER_THREADS` threads (a thread pool), within the memory and CPU-time limits of the
whole process, but no process.

Ground truth (outputs and timings of the canonical solutions) is computed in the sandbox
too, once per problem, and cached under the task's work dir by the dataset's md5 (the
hash evalplus reports). pass@1 base counts solutions passing the base tests; pass@1 plus
those passing base and plus tests (evalplus's definition). Task score = mean of the two.
"""

from __future__ import annotations

import ast
import functools
import gzip
import hashlib
import json
import os
import pickle
import re
import secrets
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from harness.tasks.base import SampleRecord, Task, TaskContext, TaskError, TaskResult
from harness.util.atomic import atomic_write

# evalplus/codegen.py (instruct prompt) and evalplus/gen/util/openai_request.py (system message)
INSTRUCTION_PREFIX = ("Please provide a self-contained Python script that solves the following problem "
                      "in a markdown code block:")
SYSTEM_PROMPT = "You are a helpful assistant good at coding."
# evalplus/config.py and evalplus/eval/__init__.py
MIN_TIME_LIMIT_S = 1.0
GT_TIME_LIMIT_FACTOR = 4.0
MEMORY_MB = 4096  # evalplus's EVALPLUS_MAX_MEMORY_BYTES default
TASK_TIMEOUT_CAP_S = 60.0  # evalplus's EVALPLUS_TIMEOUT_PER_TASK default
# Threads a solution may start (a ThreadPoolExecutor's default is at most 32 workers); the memory and
# CPU-time limits cover the whole process, threads included; fork and exec stay refused.
CHECKER_THREADS = 64
STARTUP_ALLOWANCE_S = 5.0  # interpreter + numpy/evalplus import + unpickling, on a loaded machine
PASS, FAIL, TIMEOUT = "pass", "fail", "timeout"
_STATUS = {0: PASS, 1: FAIL, 2: TIMEOUT}  # evalplus's _SUCCESS/_FAILED/_TIMEOUT; _UNKNOWN (3) -> timeout


@dataclass(frozen=True)
class EvalPlusData:
    """One EvalPlus dataset: where the offline copy lives and what evalplus calls it."""

    name: str  # evalplus's dataset name: "humaneval" | "mbpp"
    release: str  # evalplus's release name, for the download
    version: str
    offline: str  # path under the data dir
    override_env: str  # evalplus's variable naming a local copy

    @property
    def file_name(self) -> str:
        return Path(self.offline).name


HUMANEVAL_PLUS = EvalPlusData("humaneval", "HumanEvalPlus", "v0.1.10", "humanevalplus/HumanEvalPlus-v0.1.10.jsonl.gz",
                              "HUMANEVAL_OVERRIDE_PATH")
MBPP_PLUS = EvalPlusData("mbpp", "MbppPlus", "v0.2.0", "mbppplus/MbppPlus-v0.2.0.jsonl.gz", "MBPP_OVERRIDE_PATH")
_REQUIRED_KEYS = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input", "atol")


# -- data -------------------------------------------------------------------------------------
@dataclass
class Problems:
    """The problems of one dataset, as evalplus uses them (MBPP inputs deserialised)."""

    data: EvalPlusData
    items: dict[str, dict[str, Any]]
    path: Path  # the file read
    md5: str  # md5 of the uncompressed file = evalplus's dataset hash


def data_path(data: EvalPlusData, data_dir: Path | None) -> Path:
    """The offline copy under `data_dir`, or (no data dir) evalplus's own download / override."""
    if data_dir is not None:
        return Path(data_dir) / data.offline
    override = os.environ.get(data.override_env)
    if override:
        return Path(override)
    from evalplus.data.utils import get_dataset_metadata, make_cache

    url, path = get_dataset_metadata(data.release, data.version, False)
    make_cache(url, path)  # downloads from the evalplus release into evalplus's cache dir
    return Path(path)


def load_problems(data: EvalPlusData, data_dir: Path | None) -> Problems:
    path = data_path(data, data_dir)
    if not path.is_file():
        raise TaskError(f"{data.release}: data file {path} not found (expected the evalplus release file "
                        f"{data.file_name}; see ../shared/datasets/README.md)")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    items: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        problem = json.loads(line)
        missing = [key for key in _REQUIRED_KEYS if key not in problem]
        if missing:
            raise TaskError(f"{path}, line {number}: problem lacks {missing}; is this an EvalPlus file?")
        items[problem["task_id"]] = problem
    if data.name == "mbpp":
        from evalplus.data.mbpp import mbpp_deserialize_inputs  # tuples/sets/complex, as evalplus does

        for task_id, problem in items.items():
            problem["base_input"] = mbpp_deserialize_inputs(task_id, problem["base_input"])
            problem["plus_input"] = mbpp_deserialize_inputs(task_id, problem["plus_input"])
    return Problems(data, items, path, hashlib.md5(raw).hexdigest())


# -- prompt and answer extraction ----------------------------------------------------------------
def chat_messages(prompt: str, instruction_prefix: str = INSTRUCTION_PREFIX,
                  system_prompt: str | None = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """evalplus's OpenAI-chat request: instruction, then the problem in a python code block."""
    user = instruction_prefix + f"\n```python\n{prompt.strip()}\n```"
    system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    return [*system, {"role": "user", "content": user}]


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, MemoryError, ValueError, RecursionError):
        return False
    return True


def extract_code(text: str) -> str:
    """The span of >= 2 lines with the most non-blank lines that parses (earliest on ties).

    Same choice as evalplus's `code_extract`, found by trying spans from the largest
    count down instead of parsing all of them; line 0 alone when no span parses.
    """
    lines = text.split("\n")
    prefix = [0]
    for line in lines:
        prefix.append(prefix[-1] + (1 if line.strip() else 0))
    spans = sorted(((prefix[j + 1] - prefix[i], i, j) for i in range(len(lines)) for j in range(i + 1, len(lines))
                    if prefix[j + 1] - prefix[i] > 0), key=lambda s: (-s[0], s[1], s[2]))
    for _, i, j in spans:
        candidate = "\n".join(lines[i:j + 1])
        if _parses(candidate):
            return candidate
    return "\n".join(lines[:1])


@functools.lru_cache(maxsize=1)
def _evalplus_sanitize() -> Callable[[str, str | None], str]:
    """evalplus.sanitize.sanitize itself, run with `extract_code` in place of its `code_extract`.

    evalplus's `code_extract` parses every span of lines (cubic in the reply's length: 4.7 s
    for a 200-line reply, minutes for a 2048-token degenerate one); `extract_code` makes the
    same choice. The functions are evalplus's own code objects, bound to a copy of their module's
    namespace: nothing of evalplus is patched, and what it keeps (tree-sitter's view of
    imports, definitions and their dependencies) is exactly what evalplus keeps.
    """
    import types

    from evalplus import sanitize as module

    namespace = dict(vars(module))
    namespace["code_extract"] = extract_code
    for name in ("extract_target_code_or_empty", "sanitize"):
        original = getattr(module, name)
        namespace[name] = types.FunctionType(original.__code__, namespace, name, original.__defaults__)
    return namespace["sanitize"]


def sanitize(text: str, entry_point: str | None) -> str:
    """The code evalplus would run for a chat reply: `evalplus.sanitize.sanitize(text, entry_point)`.

    Its imports and the definitions the entry point reaches, from the longest span of the
    reply that parses (the span itself when none is kept). A reply that breaks evalplus's
    parsing (a null byte, nesting deeper than the recursion limit: evalplus would crash) is
    reduced to that span.
    """
    try:
        return _evalplus_sanitize()(text, entry_point)
    except (ValueError, RecursionError, MemoryError):
        return extract_code(text)


# -- ground truth ---------------------------------------------------------------------------------
def _safe_name(task_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", task_id)


_GROUNDTRUTH_DRIVER = r'''
import json, pickle
from evalplus.gen.util import trusted_exec

with open("problems.pkl", "rb") as fh:
    problems = pickle.load(fh)
times = {}
for task_id, p in problems.items():
    entry = {}
    for split in ("base", "plus"):
        out, took = trusted_exec(p["code"], p[split], p["entry_point"], record_time=True,
                                 output_not_none=p["output_not_none"])
        with open(f"{p['safe']}.{split}.pkl", "wb") as fh:
            pickle.dump(out, fh)
        entry[split + "_time"] = took
    times[task_id] = entry
with open("times.json", "w") as fh:
    json.dump(times, fh)
'''


class GroundTruth:
    """Canonical outputs and timings, computed in the sandbox, cached per dataset hash.

    Layout: <cache_dir>/<dataset>-<md5>/<task>.{base,plus}.pkl and times.json
    (times.json is written last: a task is cached when it is listed there).
    """

    def __init__(self, problems: Problems, cache_dir: Path):
        self.problems = problems
        self.dir = Path(cache_dir) / f"{problems.data.name}-{problems.md5}"
        self.dir.mkdir(parents=True, exist_ok=True)

    def expected_path(self, task_id: str, split: str) -> Path:
        return self.dir / f"{_safe_name(task_id)}.{split}.pkl"

    def times(self) -> dict[str, dict[str, list[float]]]:
        path = self.dir / "times.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def ensure(self, task_ids: Sequence[str], *, workers: int = 2, batch: int = 12,
               timeout_s: float = 1800.0, memory_mb: int = 8192) -> dict[str, dict[str, list[float]]]:
        """Compute what is missing for `task_ids`; return the timings of all of them."""
        from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS

        from harness.sandbox.api import clip_output, run_many

        known = self.times()
        missing = [t for t in task_ids if t not in known or not all(self.expected_path(t, s).is_file()
                                                                   for s in ("base", "plus"))]
        jobs, staging = [], Path(tempfile.mkdtemp(prefix="gt-", dir=self.dir))
        try:
            for start in range(0, len(missing), batch):
                chunk = missing[start:start + batch]
                payload = {}
                for task_id in chunk:
                    p = self.problems.items[task_id]
                    payload[task_id] = {
                        "code": p["prompt"] + p["canonical_solution"], "entry_point": p["entry_point"],
                        "base": p["base_input"], "plus": p["plus_input"], "safe": _safe_name(task_id),
                        "output_not_none": self.problems.data.name == "mbpp"
                        and p["entry_point"] in MBPP_OUTPUT_NOT_NONE_TASKS}
                collect = {f"{_safe_name(t)}.{s}.pkl": self.expected_path(t, s)
                           for t in chunk for s in ("base", "plus")}
                collect["times.json"] = staging / f"times-{start}.json"
                jobs.append({"source": _GROUNDTRUTH_DRIVER, "files": {"problems.pkl": pickle.dumps(payload)},
                             "collect": collect, "timeout_s": timeout_s, "memory_mb": memory_mb,
                             "file_size_mb": 4096})
            starts = range(0, len(missing), batch)
            for start, result in zip(starts, run_many(jobs, workers), strict=True):
                times_file = staging / f"times-{start}.json"
                if not result.ok or not times_file.is_file():
                    raise TaskError(f"{self.problems.data.release}: computing canonical outputs failed for "
                                    f"{missing[start:start + batch]} ({result.failure}):\n{clip_output(result.stderr)}")
                known = {**self.times(), **json.loads(times_file.read_text())}
                atomic_write(self.dir / "times.json", lambda tmp, k=known: Path(tmp).write_text(json.dumps(k)))
        finally:
            for leftover in staging.glob("*"):
                leftover.unlink()
            staging.rmdir()
        known = self.times()
        return {t: known[t] for t in task_ids}


# -- scoring ------------------------------------------------------------------------------------
_CHECK_DRIVER = r'''
import json, pickle, sys
with open("job.pkl", "rb") as fh:
    job = pickle.load(fh)
with open("expected.pkl", "rb") as fh:
    expected = pickle.load(fh)
from evalplus.eval import unsafe_execute


class Cell:
    def __init__(self, value):
        self.value = value


stat, progress = Cell(3), Cell(0)
details = [False] * len(job["inputs"])
unsafe_execute(job["dataset"], job["entry_point"], job["code"], job["inputs"], expected, job["time_limits"],
               job["atol"], True, stat, details, progress)
report = {"stat": stat.value, "details": [bool(d) for d in details[:progress.value]]}
sys.__stdout__.write(job["nonce"] + json.dumps(report) + "\n")
sys.__stdout__.flush()
'''


@dataclass
class SplitResult:
    status: str  # pass | fail | timeout (evalplus's statuses)
    sandbox_failure: str = ""  # why the sandboxed process itself failed, if it did (e.g. "forbidden: ...")


@dataclass
class SolutionScore:
    base: SplitResult
    plus: SplitResult

    @property
    def base_pass(self) -> bool:
        return self.base.status == PASS

    @property
    def plus_pass(self) -> bool:  # evalplus: base and plus tests both pass
        return self.base.status == PASS and self.plus.status == PASS


def _time_limits(ref_times: list[float], min_time_limit: float, factor: float) -> list[float]:
    return [max(min_time_limit, factor * t) for t in ref_times]


def _split_result(result: Any, nonce: str, n_inputs: int) -> SplitResult:
    """evalplus's untrusted_check verdict from the checker's report (no report = timeout)."""
    report = None
    for line in result.stdout.splitlines():
        if line.startswith(nonce):
            report = json.loads(line[len(nonce):])
    if report is None:
        return SplitResult(TIMEOUT if result.timed_out or result.failure == "timeout" else FAIL,
                           result.failure or "no report from the checker")
    status = _STATUS.get(report["stat"], TIMEOUT)
    if status == PASS and (len(report["details"]) != n_inputs or not all(report["details"])):
        status = FAIL
    return SplitResult(status, result.failure)


def score_solutions(problems: Problems, solutions: Mapping[str, str], cache_dir: Path, *, workers: int = 2,
                    min_time_limit: float = MIN_TIME_LIMIT_S, gt_time_limit_factor: float = GT_TIME_LIMIT_FACTOR,
                    memory_mb: int = MEMORY_MB, max_threads: int = CHECKER_THREADS) -> dict[str, SolutionScore]:
    """Score one solution per task id with evalplus's checker in the sandbox (base and plus tests).

    The solution may start up to `max_threads` threads (evalplus runs it in a process that may
    start any number); the sandbox's memory and CPU-time limits count all of them together.
    """
    from harness.sandbox.api import run_many

    unknown = sorted(set(solutions) - set(problems.items))
    if unknown:
        raise TaskError(f"{problems.data.release}: solutions for unknown task ids {unknown[:5]}")
    truth = GroundTruth(problems, cache_dir)
    times = truth.ensure(list(solutions), workers=workers)
    jobs, keys = [], []
    for task_id, code in solutions.items():
        problem = problems.items[task_id]
        for split in ("base", "plus"):
            limits = _time_limits(times[task_id][f"{split}_time"], min_time_limit, gt_time_limit_factor)
            nonce = f"\x1fevalplus-{secrets.token_hex(8)}:"
            job = {"dataset": problems.data.name, "entry_point": problem["entry_point"], "code": code,
                   "inputs": problem[f"{split}_input"], "time_limits": limits, "atol": problem["atol"],
                   "nonce": nonce}
            timeout = min(TASK_TIMEOUT_CAP_S, sum(limits)) + 2 + STARTUP_ALLOWANCE_S
            jobs.append({"source": _CHECK_DRIVER, "timeout_s": timeout, "memory_mb": memory_mb,
                         "max_threads": max_threads,
                         "files": {"job.pkl": pickle.dumps(job), "expected.pkl": truth.expected_path(task_id, split)},
                         "env": {"EVALPLUS_MAX_MEMORY_BYTES": str(memory_mb << 20)}})
            keys.append((task_id, split, nonce, len(problem[f"{split}_input"])))
    verdicts: dict[str, dict[str, SplitResult]] = {}
    for (task_id, split, nonce, n_inputs), result in zip(keys, run_many(jobs, workers), strict=True):
        verdicts.setdefault(task_id, {})[split] = _split_result(result, nonce, n_inputs)
    return {task_id: SolutionScore(v["base"], v["plus"]) for task_id, v in verdicts.items()}


def pass_at_1(scores: Mapping[str, SolutionScore]) -> dict[str, float]:
    """evalplus's pass@1 with one sample per problem: the fraction of problems solved."""
    if not scores:
        raise TaskError("no solutions were scored")
    return {"base_pass@1": fmean(s.base_pass for s in scores.values()),
            "plus_pass@1": fmean(s.plus_pass for s in scores.values())}


# -- tasks --------------------------------------------------------------------------------------
@contextmanager
def _cache_dir(work_dir: Path | None) -> Iterator[Path]:
    if work_dir is not None:
        path = Path(work_dir) / "evalplus"
        path.mkdir(parents=True, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="harness-evalplus-") as tmp:
            yield Path(tmp)


class _EvalPlusTask(Task):
    category: ClassVar[str] = "coding"
    answer_failure_kinds: ClassVar[tuple[str, ...]] = ("no_code", "syntax_error", "no_entry_point")
    data: ClassVar[EvalPlusData]

    @classmethod
    def answer_failures(cls, record: SampleRecord) -> list[str]:
        from harness.tasks.failures import code_failures

        return code_failures(record.extracted, (record.model_extra or {}).get("entry_point"))

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        instruction_prefix: str = INSTRUCTION_PREFIX
        system_prompt: str | None = SYSTEM_PROMPT  # None for chat templates that refuse a system turn
        task_ids: list[str] | None = None  # only these problems (in this order); None = all
        workers: int = Field(default_factory=lambda: max(1, (os.cpu_count() or 2) // 2), ge=1)  # as evalplus
        min_time_limit: float = Field(MIN_TIME_LIMIT_S, gt=0)
        gt_time_limit_factor: float = Field(GT_TIME_LIMIT_FACTOR, gt=0)
        memory_mb: int = Field(MEMORY_MB, ge=256)
        max_threads: int = Field(CHECKER_THREADS, ge=0)  # threads a solution may start

    def data_files(self, data_dir: Path) -> list[Path]:
        return [Path(data_dir) / self.data.offline]

    def run(self, ctx: TaskContext) -> TaskResult:
        from harness.sandbox.api import isolation
        from harness.tasks.client import chat_many

        opts = self.options
        problems = load_problems(self.data, ctx.data_dir)
        task_ids = list(opts.task_ids) if opts.task_ids is not None else list(problems.items)
        unknown = [t for t in task_ids if t not in problems.items]
        if unknown:
            raise TaskError(f"{self.name}: unknown task ids {unknown[:5]}")
        if ctx.limit is not None:
            task_ids = task_ids[:ctx.limit]
        conversations = [chat_messages(problems.items[t]["prompt"], opts.instruction_prefix, opts.system_prompt)
                         for t in task_ids]
        completions = chat_many(ctx.endpoint, conversations, ctx.generation,
                                desc=self.name if ctx.progress else None)
        solutions = {t: sanitize(c.text, problems.items[t]["entry_point"])
                     for t, c in zip(task_ids, completions, strict=True)}
        with _cache_dir(ctx.work_dir) as cache:
            scores = score_solutions(problems, solutions, cache, workers=opts.workers,
                                     min_time_limit=opts.min_time_limit,
                                     gt_time_limit_factor=opts.gt_time_limit_factor, memory_mb=opts.memory_mb,
                                     max_threads=opts.max_threads)
        metrics = pass_at_1(scores)
        samples = []
        for task_id, messages, completion in zip(task_ids, conversations, completions, strict=True):
            score = scores[task_id]
            samples.append(SampleRecord(
                sample_id=task_id, prompt=messages, output=completion.text, extracted=solutions[task_id],
                target=None, score=(score.base_pass + score.plus_pass) / 2,
                base_status=score.base.status, plus_status=score.plus.status,
                base_sandbox_failure=score.base.sandbox_failure, plus_sandbox_failure=score.plus.sandbox_failure,
                finish_reason=completion.finish_reason, completion_tokens=completion.completion_tokens,
                entry_point=problems.items[task_id]["entry_point"]))
        provenance = self.base_provenance(ctx, [problems.path])
        from importlib.metadata import version

        provenance.update({
            "evalplus_version": version("evalplus"),
            "dataset": f"{self.data.release}-{self.data.version}",
            "dataset_md5": problems.md5,  # evalplus's dataset hash
            "data_file": str(problems.path),
            "n_problems": len(problems.items),
            "prompt_sha256": hashlib.sha256(json.dumps([opts.system_prompt, opts.instruction_prefix]).encode())
            .hexdigest(),
            "scoring": {"checker": "evalplus.eval.unsafe_execute in harness.sandbox.api", "memory_mb": opts.memory_mb,
                        "min_time_limit_s": opts.min_time_limit, "gt_time_limit_factor": opts.gt_time_limit_factor,
                        "timeout_cap_s": TASK_TIMEOUT_CAP_S, "max_threads": opts.max_threads,
                        "sanitizer": "evalplus.sanitize.sanitize (code_extract: harness.tasks.coding.extract_code)"},
            "sandbox_isolation": isolation(),
        })
        return TaskResult(task=self.name, category=self.category, score=fmean(metrics.values()), metrics=metrics,
                          n_samples=len(samples), samples=samples, provenance=provenance)


class HumanEvalPlus(_EvalPlusTask):
    name = "humaneval_plus"
    version = "2"  # 2: evalplus's own sanitizer, threads allowed in the checker (issue 22)
    data = HUMANEVAL_PLUS


class MbppPlus(_EvalPlusTask):
    name = "mbpp_plus"
    version = "2"  # 2: evalplus's own sanitizer, threads allowed in the checker (issue 22)
    data = MBPP_PLUS
