"""Evaluate one served model on benchmark tasks and write its results.

    python -m harness.evaluate --base-url http://127.0.0.1:8000/v1 --model NAME \\
        --tasks coding,math --limit 20 --out DIR [--data-dir ../shared/datasets]

`--tasks` takes task names and category names (a category stands for those of its
paper tasks that are registered). For each task DIR gets `<task>/result.json` (the result
without samples) and `<task>/samples.jsonl` (one record per sample), the files a sweep
stores for an evaluation (harness.tasks.runner); DIR/results.csv
is the tidy results table: one row per task metric that is a fraction (counts `n_*`
and raw means `mean_*` stay in the JSON) and one row per category score. A task that
fails is recorded with its error and the others still run; the exit code is 1 if any
task failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness.tasks import UnknownTaskError, expand
from harness.tasks.base import Endpoint, GenerationSettings, TaskContext, TaskResult
from harness.tasks.categories import category_score
from harness.tasks.runner import failed, run_task, write_task_result


# -- task selection ---------------------------------------------------------------------
def expand_tasks(spec: str) -> list[str]:
    """Comma-separated task and category names -> registered task names (harness.tasks.expand)."""
    out = expand([part.strip() for part in spec.split(",") if part.strip()])
    if not out:
        raise UnknownTaskError(f"no tasks in {spec!r}")
    return out


def evaluate(endpoint: Endpoint, tasks: Sequence[str], *, generation: GenerationSettings | None = None,
             limit: int | None = None, data_dir: Path | None = None, work_dir: Path | None = None,
             judge: Endpoint | None = None, task_options: dict[str, dict[str, Any]] | None = None,
             progress: bool = True, on_result: Callable[[TaskResult], None] | None = None) -> list[TaskResult]:
    """Run `tasks` (registered names) against `endpoint`, one after another; failures are results too.

    `task_options` maps a task name to its Options; `on_result` is called as each task
    finishes (the CLI writes files there, so a crash later loses nothing).
    """
    results = []
    for name in tasks:
        ctx = TaskContext(endpoint=endpoint, generation=generation or GenerationSettings(), limit=limit,
                          data_dir=Path(data_dir) if data_dir else None,
                          work_dir=Path(work_dir) / name if work_dir else None, judge=judge, progress=progress)
        result = run_task(name, ctx, (task_options or {}).get(name))
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


# -- writing ----------------------------------------------------------------------------
def summary_rows(results: Sequence[TaskResult], *, model: str, method: str = "baseline", ratio: float = 0.0,
                 family: str = "") -> list[dict[str, Any]]:
    """Tidy rows (harness.results.table schema) of one model, built as the sweep builds them (harness.results.table)."""
    from harness.results.table import measured_base, result_rows

    base = measured_base(model, method, ratio, family=family)

    def provenance(r: TaskResult) -> dict[str, Any]:
        keep = ("endpoint_model", "generation", "chat_template_sha256", "data_sha256", "limit")
        return {k: r.provenance.get(k) for k in keep}

    return result_rows(results, base, provenance=provenance)


def write_summary(results: Sequence[TaskResult], out_dir: Path, **labels: Any) -> Path:
    from harness.results.table import rows_to_frame, write_results

    path = out_dir / "results.csv"
    write_results(rows_to_frame(summary_rows(results, **labels)), path)
    return path


def summary_text(results: Sequence[TaskResult]) -> str:
    lines = [f"{'task':22s} {'category':18s} {'status':8s} {'n':>5s} {'score':>7s}  metrics / reason"]
    for r in results:
        score = f"{r.score:7.4f}" if r.score is not None else "      -"
        status = "FAILED" if failed(r) else r.status
        detail = ", ".join(f"{k}={v:.4g}" for k, v in sorted(r.metrics.items())) if r.status == "ok" else r.reason
        lines.append(f"{r.task:22s} {r.category:18s} {status:8s} {r.n_samples:5d} {score}  {detail}")
    for category in dict.fromkeys(r.category for r in results):
        cat = category_score(category, list(results))
        if cat is not None:
            missing = f" (missing: {', '.join(cat.missing)})" if cat.missing else ""
            over = ", ".join(cat.tasks)
            lines.append(f"category {category}: {cat.value:.4f} = {cat.definition} over {over}{missing}")
    return "\n".join(lines)


# -- CLI --------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True, help="OpenAI-compatible base URL, ending in /v1")
    p.add_argument("--model", required=True, help="served model name")
    p.add_argument("--api-key-env", help="environment variable holding the server's API key")
    p.add_argument("--tasks", required=True, help="comma-separated task and/or category names")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--limit", type=int, help="first N samples of each task")
    p.add_argument("--data-dir", type=Path, help="offline benchmark copies (../shared/datasets layout)")
    p.add_argument("--work-dir", type=Path, help="scratch space for tool caches (default: OUT/work)")
    p.add_argument("--tokenizer", help="local checkpoint dir or hub id: chat-template hash, lm-eval tokenization")
    p.add_argument("--judge-base-url", help="judge endpoint for judged tasks (creative writing)")
    p.add_argument("--judge-model", help="judge's served model name")
    p.add_argument("--judge-api-key-env", help="environment variable holding the judge's API key")
    p.add_argument("--max-tokens", type=int, default=GenerationSettings().max_tokens)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")
    p.add_argument("--enable-thinking", action="store_true", help="leave thinking mode on (default: off)")
    p.add_argument("--concurrency", type=int, default=GenerationSettings().concurrency, help="parallel requests")
    p.add_argument("--task-options", type=json.loads, default={},
                   help='JSON object: task name -> options, e.g. \'{"wildbench_creative": {"data_file": "x.jsonl"}}\'')
    p.add_argument("--label", help="model name in the results table (default: --model)")
    p.add_argument("--method", default="baseline", help="method label in the results table")
    p.add_argument("--ratio", type=float, default=0.0, help="compression ratio label in the results table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        tasks = expand_tasks(args.tasks)
    except UnknownTaskError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if bool(args.judge_base_url) != bool(args.judge_model):
        print("error: give both --judge-base-url and --judge-model (or neither)", file=sys.stderr)
        return 2
    endpoint = Endpoint(base_url=args.base_url, model=args.model, api_key_env=args.api_key_env,
                        tokenizer=args.tokenizer)
    judge = (Endpoint(base_url=args.judge_base_url, model=args.judge_model, api_key_env=args.judge_api_key_env)
             if args.judge_base_url else None)
    generation = GenerationSettings(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                                    stop=args.stop, seed=args.seed, concurrency=args.concurrency,
                                    chat_template_kwargs={"enable_thinking": args.enable_thinking})
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    def on_result(result: TaskResult) -> None:
        write_task_result(result, out / result.task)
        state = "FAILED: " + result.reason if failed(result) else f"score={result.score}"
        print(f"[evaluate] {result.task}: {state}", file=sys.stderr, flush=True)

    print(f"[evaluate] tasks: {', '.join(tasks)}", file=sys.stderr, flush=True)
    results = evaluate(endpoint, tasks, generation=generation, limit=args.limit, data_dir=args.data_dir,
                       work_dir=args.work_dir or out / "work", judge=judge, task_options=args.task_options,
                       progress=not args.quiet, on_result=on_result)
    table = write_summary(results, out, model=args.label or args.model, method=args.method, ratio=args.ratio)
    print(summary_text(results))
    print(f"results table: {table}")
    return 1 if any(failed(r) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
