"""LiveCodeBench code generation: problems from a release window, programs run against hidden tests, pass@1.

Data: the `livecodebench/code_generation_lite` dataset (one JSONL shard per release,
`test.jsonl`, `test2.jsonl`, ...; `release_vN` = shards 1..N, `vN` = shard N alone,
`vM_vN` = shards M..N). It is read from `<data_dir>/livecodebench/code_generation_lite/`
when that copy exists, from the Hugging Face hub otherwise (huggingface_hub downloads the
shards; `datasets` no longer runs the dataset's loading script). Problems are kept when
their `contest_date` falls in the window (the paper: 2025-01-01 .. 2025-07-31, inclusive).
Private tests are base64(zlib(pickle(JSON string))) in later shards; they are decoded with an
unpickler that refuses every global, so the data can only ever yield a string.

Prompts are LiveCodeBench's own chat prompt (its generic system message and question
template, with starter code for functional problems, "read stdin, write stdout" otherwise).
The program is the text between the first two lines holding ``` (LiveCodeBench's rule; none = fail).

Sampling follows LiveCodeBench, not the harness default: temperature 0.2, top_p 0.95,
max_tokens 2000, n = 1. These options override the harness generation settings (set one to
None to keep the harness's value); the settings actually sent are what provenance records
under "generation".

Grading runs each test case in its own sandboxed process (`harness.sandbox.api.run_python`,
time limit per test, memory limit), public tests first, stopping at the first failure as
LiveCodeBench does. Both styles get LiveCodeBench's import prelude (LeetCode starter code
uses `List` without importing it):
- stdin problems: the program runs as `__main__` with the test input on stdin; `exit()` ends
  it normally. Output matches when, after stripping, it has the same lines as the expected
  output and each line is equal, or equal as a sequence of decimal numbers (exact Decimal
  equality, LiveCodeBench's rule: "2.50" matches "2.5", "0.333" does not match "0.3333").
- functional problems: a driver runs the program as a module, builds `Solution()` when the
  program defines it, calls the method named by metadata `func_name` with one JSON-decoded
  argument per input line and compares the result (a tuple counts as a list) with the
  JSON-decoded expected output by `==`.
A problem passes when all its tests pass; the task score is pass@1 (mean over problems and samples).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import pickle
import secrets
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from statistics import fmean
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from harness.tasks.base import GenerationSettings, SampleRecord, Task, TaskContext, TaskError, TaskResult
from harness.tasks.client import chat_many

HF_REPO = "livecodebench/code_generation_lite"
LOCAL_SUBDIR = Path("livecodebench") / "code_generation_lite"
N_SHARDS = 6  # test.jsonl .. test6.jsonl on the hub (release_v6 is the latest release)
REQUIRED_FIELDS = ("question_title", "question_content", "platform", "question_id", "contest_id", "contest_date",
                   "starter_code", "difficulty", "public_test_cases", "private_test_cases", "metadata")


def _shard(index: int) -> str:
    return "test.jsonl" if index == 1 else f"test{index}.jsonl"


def release_files(version: str) -> list[str]:
    """Shard files of a release tag: release_vN / release_latest (cumulative), vN (one shard), vM_vN (a range)."""
    if version == "release_latest":
        return [_shard(i) for i in range(1, N_SHARDS + 1)]
    try:
        if version.startswith("release_v"):
            first, last = 1, int(version.removeprefix("release_v"))
        elif "_" in version:
            lo, hi = version.split("_")
            first, last = int(lo.removeprefix("v")), int(hi.removeprefix("v"))
        else:
            first = last = int(version.removeprefix("v"))
    except ValueError:
        first = last = 0
    if not (1 <= first <= last <= N_SHARDS) or not version.startswith(("release_v", "v")):
        raise ValueError(f"unknown LiveCodeBench release {version!r}: use release_v1..release_v{N_SHARDS}, "
                         f"release_latest, v1..v{N_SHARDS} or a range such as v5_v6")
    return [_shard(i) for i in range(first, last + 1)]


# -- prompts (LiveCodeBench's chat style) -------------------------------------------------
SYSTEM_MESSAGE = ("You are an expert Python programmer. You will be given a question (problem specification) "
                  "and will generate a correct Python program that matches the specification and passes all "
                  "tests. You will NOT return anything except for the program.")
FORMAT_WITH_STARTER = ("You will use the following starter code to write the solution to the problem and enclose "
                       "your code within delimiters.")
FORMAT_STDIN = ("Read the inputs from stdin solve the problem and write the answer to stdout (do not directly test "
                "on the sample inputs). Enclose your code within delimiters as follows.")


def user_prompt(question_content: str, starter_code: str) -> str:
    """LiveCodeBench's question template for chat models."""
    if starter_code:
        fmt = f"### Format: {FORMAT_WITH_STARTER}\n```python\n{starter_code}\n```\n\n"
    else:
        fmt = f"### Format: {FORMAT_STDIN}\n```python\n# YOUR CODE HERE\n```\n\n"
    return f"### Question:\n{question_content}\n\n{fmt}### Answer: (use the provided format with backticks)\n\n"


def conversation(problem: Problem, system_in_user: bool = False) -> list[dict[str, str]]:
    """System + user messages; `system_in_user` prepends the system text for templates without a system role."""
    user = user_prompt(problem.question_content, problem.starter_code)
    if system_in_user:
        return [{"role": "user", "content": f"{SYSTEM_MESSAGE}\n\n{user}"}]
    return [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": user}]


def extract_code(text: str) -> str:
    """The lines between the first two lines containing ``` ("" when there are fewer than two)."""
    lines = text.split("\n")
    fences = [i for i, line in enumerate(lines) if "```" in line]
    if len(fences) < 2:
        return ""
    return "\n".join(lines[fences[0] + 1:fences[1]])


# -- data --------------------------------------------------------------------------------
class _NoGlobals(pickle.Unpickler):
    """Unpickles plain data only: any class or function reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from LiveCodeBench test data")


def decode_private_tests(field_value: str) -> list[dict[str, Any]]:
    """The private test list: plain JSON (early shards) or base64(zlib(pickle(JSON string)))."""
    try:
        return json.loads(field_value)
    except json.JSONDecodeError:
        pass
    try:
        raw = zlib.decompress(base64.b64decode(field_value.encode("ascii"), validate=True))
    except (ValueError, zlib.error) as exc:
        raise TaskError(f"private_test_cases is neither JSON nor base64+zlib data: {exc}") from exc
    try:
        text = _NoGlobals(io.BytesIO(raw)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise TaskError(f"private_test_cases: unsafe or corrupt pickle: {exc}") from exc
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if not isinstance(text, str):
        raise TaskError(f"private_test_cases: expected a pickled JSON string, got {type(text).__name__}")
    return json.loads(text)


@dataclass(frozen=True)
class Case:
    input: str
    output: str
    testtype: Literal["stdin", "functional"]
    public: bool


@dataclass
class Problem:
    question_id: str
    question_title: str
    question_content: str
    platform: str
    contest_id: str
    contest_date: datetime
    starter_code: str
    difficulty: str
    func_name: str | None  # set: functional (call-based) problem; None: stdin/stdout
    tests: list[Case] = field(default_factory=list)

    @property
    def style(self) -> str:
        return "functional" if self.func_name else "stdin"


def _tests(items: Any, public: bool, qid: str) -> list[Case]:
    if not isinstance(items, list):
        raise TaskError(f"LiveCodeBench problem {qid}: test cases are not a list")
    found = []
    for item in items:
        try:
            found.append(Case(str(item["input"]), str(item["output"]), item["testtype"], public))
        except (KeyError, TypeError) as exc:
            raise TaskError(f"LiveCodeBench problem {qid}: malformed test case ({exc})") from exc
        if found[-1].testtype not in ("stdin", "functional"):
            raise TaskError(f"LiveCodeBench problem {qid}: unknown testtype {found[-1].testtype!r}")
    return found


def parse_problem(row: dict[str, Any]) -> Problem:
    """One dataset row (the hub's exact schema) -> Problem with public then private tests decoded."""
    missing = [k for k in REQUIRED_FIELDS if k not in row]
    if missing:
        raise TaskError(f"LiveCodeBench row {row.get('question_id', '?')} lacks fields {missing}")
    qid = str(row["question_id"])
    try:
        metadata = json.loads(row["metadata"]) if row["metadata"] else {}
    except json.JSONDecodeError as exc:
        raise TaskError(f"LiveCodeBench problem {qid}: metadata is not JSON: {exc}") from exc
    tests = _tests(json.loads(row["public_test_cases"]), True, qid)
    tests += _tests(decode_private_tests(row["private_test_cases"]), False, qid)
    if not tests:
        raise TaskError(f"LiveCodeBench problem {qid} has no test cases")
    problem = Problem(qid, row["question_title"], row["question_content"], row["platform"], str(row["contest_id"]),
                      datetime.fromisoformat(row["contest_date"]), row["starter_code"] or "", row["difficulty"],
                      metadata.get("func_name") or None, tests)
    if problem.func_name:  # the driver decodes these; bad data is a data error, not a model failure
        for case in tests:
            try:
                [json.loads(line) for line in case.input.split("\n")]
                json.loads(case.output)
            except json.JSONDecodeError as exc:
                raise TaskError(f"LiveCodeBench problem {qid}: functional test is not JSON per line: {exc}") from exc
    return problem


def iter_rows(paths: Sequence[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise TaskError(f"{path}:{lineno}: not JSON: {exc}") from exc


def in_window(row: dict[str, Any], start: date | None, end: date | None) -> bool:
    """Whether the row's contest day lies in [start, end] (a None bound is open)."""
    try:
        day = datetime.fromisoformat(row["contest_date"]).date()
    except (KeyError, TypeError, ValueError) as exc:
        raise TaskError(f"LiveCodeBench row {row.get('question_id', '?')}: bad contest_date ({exc!r})") from exc
    return (start is None or day >= start) and (end is None or day <= end)


# -- grading -----------------------------------------------------------------------------
_PRELUDE_MODULES = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
                    "statistics", "itertools", "functools", "operator", "io", "sys", "json", "builtins", "typing")
# LiveCodeBench runs every program after these imports (star imports, then the modules by name).
PRELUDE = ("".join(f"from {m} import *\n" for m in _PRELUDE_MODULES)
           + "".join(f"import {m}\n" for m in _PRELUDE_MODULES[:-2])
           + "sys.setrecursionlimit(50000)\n")

_COMPILE_ERROR_EXIT = 97  # the stdin runner's exit code for a program that does not compile
_STDIN_RUNNER = """\
import sys
_SOURCE = {source!r}
try:
    _code = compile(_SOURCE, "solution.py", "exec")
except SyntaxError as exc:
    print(repr(exc), file=sys.stderr)
    sys.exit({compile_error_exit})
try:
    exec(_code, {{"__name__": "__main__", "__builtins__": __builtins__}})
except SystemExit:  # exit() ends the program; its output is still judged
    pass
"""

_FUNCTIONAL_DRIVER = """\
import contextlib, io, json, sys
_SOURCE = {source!r}
_FUNC = {func!r}
_MARK = {mark!r}

def _report(**verdict):
    sys.__stdout__.write("\\n" + _MARK + json.dumps(verdict) + "\\n")
    sys.__stdout__.flush()

_case = json.loads(sys.stdin.read())
sys.stdin = io.StringIO("")
_args = [json.loads(line) for line in _case["input"].split("\\n")]
_expected = json.loads(_case["output"])
_module = {{"__name__": "solution", "__builtins__": __builtins__}}
try:
    _code = compile(_SOURCE, "solution.py", "exec")
except SyntaxError as exc:
    _report(verdict="compile_error", detail=repr(exc)[:300])
    sys.exit(0)
try:
    with contextlib.redirect_stdout(io.StringIO()):
        exec(_code, _module)
        _holder = _module["Solution"]() if isinstance(_module.get("Solution"), type) else None
        _method = getattr(_holder, _FUNC, None) if _holder is not None else _module.get(_FUNC)
        if _method is None:
            _report(verdict="runtime_error", detail="no Solution." + _FUNC + " (nor function " + _FUNC + ")")
            sys.exit(0)
        _got = _method(*_args)
except SystemExit:
    raise
except BaseException as exc:
    _report(verdict="runtime_error", detail=repr(exc)[:300])
    sys.exit(0)
if isinstance(_got, tuple):
    _got = list(_got)
_report(verdict="passed" if _got == _expected else "wrong_answer", detail=repr(_got)[:300])
"""


def _decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(token) for token in line.split()]
    except InvalidOperation:
        return None


def _stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def stdout_matches(got: str, expected: str) -> bool:
    """LiveCodeBench's stdout rule: same stripped lines; each equal as text or as decimal tokens."""
    got_lines, expected_lines = _stripped_lines(got), _stripped_lines(expected)
    if len(got_lines) != len(expected_lines):
        return False
    for g, e in zip(got_lines, expected_lines, strict=True):
        if g == e:
            continue
        g_num, e_num = _decimals(g), _decimals(e)
        if g_num is None or e_num is None or g_num != e_num:
            return False
    return True


@dataclass
class CaseResult:
    verdict: Literal["passed", "wrong_answer", "time_limit", "runtime_error", "compile_error"]
    detail: str = ""
    duration_s: float = 0.0


def _clip(text: str, n: int = 300) -> str:
    """What a result keeps of a program's output: at most about `n` characters (head and tail)."""
    from harness.sandbox.api import clip_output

    return clip_output(text, n)


def _why(result: Any, note: str = "") -> str:
    """The sandbox's failure (e.g. "memory", "forbidden: ...") and the end of stderr."""
    parts = [result.failure or f"exit {result.returncode}", note, _clip(result.stderr.strip())]
    return "; ".join(p for p in parts if p)


def run_case(code: str, case: Case, func_name: str | None, *, timeout_s: float, memory_mb: int) -> CaseResult:
    """Run one program on one test case in the sandbox and judge it."""
    from harness.sandbox.api import run_python

    source = PRELUDE + code
    if func_name:
        mark = f"@@lcb-verdict-{secrets.token_hex(8)}@@"
        program = _FUNCTIONAL_DRIVER.format(source=source, func=func_name, mark=mark)
        stdin = json.dumps({"input": case.input, "output": case.output})
    else:
        program, stdin = _STDIN_RUNNER.format(source=source, compile_error_exit=_COMPILE_ERROR_EXIT), case.input
    result = run_python(program, stdin=stdin, timeout_s=timeout_s, memory_mb=memory_mb)
    if result.timed_out or result.failure == "timeout":  # wall clock or CPU limit
        return CaseResult("time_limit", f"over {timeout_s:g} s", result.duration_s)
    if func_name:
        verdicts = [line for line in result.stdout.splitlines() if line.startswith(mark)]
        if not verdicts:
            return CaseResult("runtime_error", _why(result, "no verdict"), result.duration_s)
        found = json.loads(verdicts[-1][len(mark):])
        return CaseResult(found["verdict"], _clip(str(found["detail"])), result.duration_s)
    if result.returncode != 0:
        verdict = "compile_error" if result.returncode == _COMPILE_ERROR_EXIT else "runtime_error"
        return CaseResult(verdict, _why(result), result.duration_s)
    if stdout_matches(result.stdout, case.output):
        return CaseResult("passed", "", result.duration_s)
    return CaseResult("wrong_answer", f"got {_clip(result.stdout)!r}, expected {_clip(case.output)!r}",
                      result.duration_s)


@dataclass
class Grade:
    """All tests of one problem against one program (stops at the first failure)."""

    passed: bool
    verdict: str  # "passed", "no_code", or the first failing test's verdict
    tests_run: int
    tests_total: int
    failed_test: dict[str, Any] | None = None
    duration_s: float = 0.0


def grade(problem: Problem, code: str, *, timeout_s: float, memory_mb: int) -> Grade:
    if not code.strip():
        return Grade(False, "no_code", 0, len(problem.tests))
    elapsed = 0.0
    for index, case in enumerate(problem.tests):
        outcome = run_case(code, case, problem.func_name, timeout_s=timeout_s, memory_mb=memory_mb)
        elapsed += outcome.duration_s
        if outcome.verdict != "passed":
            failed = {"index": index, "public": case.public, "verdict": outcome.verdict, "detail": outcome.detail}
            return Grade(False, outcome.verdict, index + 1, len(problem.tests), failed, elapsed)
    return Grade(True, "passed", len(problem.tests), len(problem.tests), None, elapsed)


def check_sandbox(timeout_s: float, memory_mb: int) -> None:
    """A trivial program must run, or every problem would silently score 0."""
    from harness.sandbox.api import run_python

    result = run_python("print(input()[::-1])", stdin="abc\n", timeout_s=max(timeout_s, 10.0), memory_mb=memory_mb)
    if result.returncode != 0 or result.stdout.strip() != "cba":
        raise TaskError(f"the code sandbox does not run a trivial program (exit {result.returncode}, "
                        f"failure {result.failure!r}, stderr {result.stderr[-300:]!r}); fix harness.sandbox.api first")


# -- the task ----------------------------------------------------------------------------
class LiveCodeBench(Task):
    """LiveCodeBench code generation (stdin and functional problems), pass@1 against public + private tests."""

    name: ClassVar[str] = "livecodebench"
    category: ClassVar[str] = "coding"
    answer_failure_kinds: ClassVar[tuple[str, ...]] = ("no_code", "syntax_error")

    @classmethod
    def answer_failures(cls, record: SampleRecord) -> list[str]:
        from harness.tasks.failures import code_failures

        return code_failures(record.extracted, None)

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        release_version: str = "release_v6"  # which shards to read; the window picks the problems
        start_date: date | None = date(2025, 1, 1)  # inclusive; None = no lower bound
        end_date: date | None = date(2025, 7, 31)  # inclusive; None = no upper bound
        source: Literal["auto", "local", "hub"] = "auto"  # auto: data_dir copy if present, else the hub
        revision: str = "main"  # hub revision (branch, tag or commit); the resolved commit is recorded
        # LiveCodeBench's sampling (overrides the harness generation settings; None keeps the harness's).
        temperature: float | None = Field(0.2, ge=0.0)
        top_p: float | None = Field(0.95, gt=0.0, le=1.0)
        max_tokens: int | None = Field(2000, ge=1)
        n: int = Field(1, ge=1)  # samples per problem; pass@1 = mean over all of them
        system_in_user: bool = False  # for chat templates that reject a system message (e.g. Mixtral)
        timeout_s: float = Field(6.0, gt=0.0)  # per test case (LiveCodeBench's default)
        memory_mb: int = Field(2048, ge=64)  # per test process
        workers: int = Field(2, ge=1)  # programs graded in parallel

        @field_validator("release_version")
        @classmethod
        def _known_release(cls, value: str) -> str:
            release_files(value)
            return value

        @model_validator(mode="after")
        def _ordered_window(self) -> LiveCodeBench.Options:
            if self.start_date and self.end_date and self.start_date > self.end_date:
                raise ValueError(f"start_date {self.start_date} is after end_date {self.end_date}")
            return self

    options: Options

    # -- data ------------------------------------------------------------------------
    def data_files(self, data_dir: Path) -> list[Path]:
        return [data_dir / LOCAL_SUBDIR / name for name in release_files(self.options.release_version)]

    def check_data(self, data_dir: Path | None) -> list[str]:
        if self.options.source == "local" and data_dir is None:
            return [f"{self.name}: source 'local' needs a data_dir"]
        if self.options.source == "local":
            return super().check_data(data_dir)
        return []

    def _local_paths(self, ctx: TaskContext) -> list[Path] | None:
        if self.options.source == "hub" or ctx.data_dir is None:
            return None
        paths = self.data_files(ctx.data_dir)
        missing = [p for p in paths if not p.is_file()]
        if not missing:
            return paths
        if self.options.source == "local":
            raise TaskError(f"{self.name}: missing {', '.join(map(str, missing))}; copy the shards of "
                            f"{HF_REPO} there or use source 'hub'")
        return None

    def _hub_paths(self) -> tuple[list[Path], str]:
        """The release's shards from the hub (or, offline, from the Hugging Face cache) and their commit."""
        from huggingface_hub import HfApi, hf_hub_download

        names = release_files(self.options.release_version)
        try:
            commit = HfApi().dataset_info(HF_REPO, revision=self.options.revision).sha
            return [Path(hf_hub_download(HF_REPO, n, repo_type="dataset", revision=commit)) for n in names], commit
        except Exception as online_error:  # offline, renamed, rate-limited ...
            try:  # shards downloaded before: the cache's snapshot folder is named by its commit
                paths = [Path(hf_hub_download(HF_REPO, n, repo_type="dataset", revision=self.options.revision,
                                              local_files_only=True)) for n in names]
            except Exception:
                raise TaskError(f"{self.name}: could not download {HF_REPO} ({self.options.release_version}) from "
                                f"the Hugging Face hub: {online_error}; put the shards under "
                                f"<data_dir>/{LOCAL_SUBDIR} instead") from online_error
            commits = {p.parent.name for p in paths}
            if len(commits) != 1:
                raise TaskError(f"{self.name}: cached shards of {HF_REPO} come from different commits {commits}; "
                                "download them again online") from online_error
            return paths, commits.pop()

    def load(self, ctx: TaskContext) -> tuple[list[Problem], list[Path], dict[str, Any]]:
        """Problems of the release inside the date window, the files read, and what identifies the data."""
        local = self._local_paths(ctx)
        paths, revision = (local, "local copy") if local is not None else self._hub_paths()
        opts = self.options
        problems, n_release = [], 0
        for row in iter_rows(paths):
            n_release += 1
            if in_window(row, opts.start_date, opts.end_date):
                problems.append(parse_problem(row))
        dates = sorted(p.contest_date.date().isoformat() for p in problems)
        dataset = {
            "hf_repo": HF_REPO, "release_version": opts.release_version, "files": [p.name for p in paths],
            "source": "local" if local is not None else "hub", "revision": revision,
            "date_window": [opts.start_date.isoformat() if opts.start_date else None,
                            opts.end_date.isoformat() if opts.end_date else None],
            "n_problems_in_release": n_release, "n_problems_in_window": len(problems),
            "contest_dates_in_window": [dates[0], dates[-1]] if dates else None,
        }
        return problems, paths, dataset

    # -- run -------------------------------------------------------------------------
    def generation(self, ctx: TaskContext) -> GenerationSettings:
        """The harness settings with LiveCodeBench's sampling on top."""
        overrides = {k: v for k in ("temperature", "top_p", "max_tokens")
                     if (v := getattr(self.options, k)) is not None}
        return ctx.generation.model_copy(update=overrides)

    def run(self, ctx: TaskContext) -> TaskResult:
        opts = self.options
        problems, files, dataset = self.load(ctx)
        if ctx.limit is not None:
            problems = problems[:ctx.limit]
        if not problems:
            raise TaskError(f"{self.name}: no problems in {opts.release_version} between {opts.start_date} and "
                            f"{opts.end_date} (limit={ctx.limit})")
        check_sandbox(opts.timeout_s, opts.memory_mb)
        settings = self.generation(ctx)
        conversations = [conversation(p, opts.system_in_user) for p in problems]
        # One pass over all problems per sample index, each with its own seed.
        completions = [chat_many(ctx.endpoint, conversations, settings.model_copy(update={"seed": settings.seed + i}),
                                 desc=f"{self.name} sample {i + 1}/{opts.n}" if ctx.progress else None)
                       for i in range(opts.n)]
        jobs = [(p, conv, i, completions[i][j]) for i in range(opts.n)
                for j, (p, conv) in enumerate(zip(problems, conversations, strict=True))]
        codes = [extract_code(c.text) for _, _, _, c in jobs]

        def grade_one(index: int) -> Grade:
            return grade(jobs[index][0], codes[index], timeout_s=opts.timeout_s, memory_mb=opts.memory_mb)

        # Each grade runs sandboxed subprocesses; threads only wait for them.
        with ThreadPoolExecutor(max_workers=opts.workers) as pool:
            grades = list(pool.map(grade_one, range(len(jobs))))
        samples = [
            SampleRecord(
                sample_id=p.question_id if opts.n == 1 else f"{p.question_id}#{i}", prompt=conv, output=c.text,
                extracted=code, target={"n_tests": len(p.tests), "style": p.style}, score=float(g.passed),
                question_id=p.question_id, sample_index=i, platform=p.platform, difficulty=p.difficulty,
                contest_date=p.contest_date.isoformat(), style=p.style, verdict=g.verdict, tests_run=g.tests_run,
                tests_total=g.tests_total, failed_test=g.failed_test, grading_s=round(g.duration_s, 3),
                finish_reason=c.finish_reason, completion_tokens=c.completion_tokens)
            for (p, conv, i, c), code, g in zip(jobs, codes, grades, strict=True)
        ]
        return TaskResult(task=self.name, category=self.category, score=fmean(s.score for s in samples),
                          metrics=self.metrics(samples), n_samples=len(samples), samples=samples,
                          provenance=self.provenance(ctx, files, dataset, settings))

    @staticmethod
    def metrics(samples: Sequence[SampleRecord]) -> dict[str, float]:
        """pass@1 overall, per difficulty and per style; how often no code or a truncated reply came back."""
        found = {"pass@1": fmean(s.score for s in samples),
                 "n_problems": float(len({s.question_id for s in samples})),
                 "no_code_fraction": fmean(s.verdict == "no_code" for s in samples),
                 "truncated_fraction": fmean(s.finish_reason == "length" for s in samples)}
        for key in ("difficulty", "style"):
            for value in sorted({getattr(s, key) for s in samples}):
                found[f"pass@1_{value}"] = fmean(s.score for s in samples if getattr(s, key) == value)
        return found

    def provenance(self, ctx: TaskContext, files: list[Path], dataset: dict[str, Any],
                   settings: GenerationSettings) -> dict[str, Any]:
        from harness.sandbox.api import isolation

        found = self.base_provenance(ctx, files)
        harness_generation = found["generation"]
        found["generation"] = settings.recorded()  # what was actually sent
        found["generation_overrides"] = {k: {"harness": harness_generation[k], "livecodebench": found["generation"][k]}
                                         for k in ("temperature", "top_p", "max_tokens")
                                         if harness_generation[k] != found["generation"][k]}
        found["dataset"] = dataset
        found["prompt"] = {"style": "LiveCodeBench chat (generic system message + question template)",
                           "system_in_user": self.options.system_in_user,
                           "system_sha256": hashlib.sha256(SYSTEM_MESSAGE.encode()).hexdigest()}
        found["execution"] = {"timeout_s_per_test": self.options.timeout_s, "memory_mb": self.options.memory_mb,
                              "stop_at_first_failure": True, "stdout_compare": "stripped lines, text or Decimal",
                              "prelude_sha256": hashlib.sha256(PRELUDE.encode()).hexdigest(),
                              "sandbox_isolation": isolation()}
        return found
