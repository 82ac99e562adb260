"""`python -m harness.sweep sweeps/X.yaml`: the whole grid, cached, resumable, on one machine or a Ray cluster.

For each model: calibrate once (with every statistic the sweep's methods need), plan
each (method, ratio), write each checkpoint, then serve each variant (the baseline
included) once for all its missing tasks. The grid (harness.sweep.grid) says which jobs exist
and what each waits for; the stages (harness.sweep.stages) do one job each; an executor
(harness.sweep.executors: local, ray) runs the graph. Every output is stored under a content
hash of the settings that change it (harness.sweep.store), so a re-run does only missing work,
a run killed at any point resumes without losing or duplicating results, and two drivers
on one store share the work. A failed job is recorded with its log and the sweep goes on;
the exit code says whether everything succeeded. The results table is rebuilt from the
stored outputs at the end of every run.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from harness.sweep.config import SweepConfig, SweepConfigError, ValidatedSweep, load_sweep
from harness.sweep.grid import Filters, Grid, build_grid, job_graph
from harness.sweep.stages import PIPELINE
from harness.sweep.store import Store
from harness.util.redaction import RedactingFormatter

log = logging.getLogger("harness.sweep")


def dry_run(cfg: SweepConfig, store: Store, grid: Grid, estimate=None) -> None:
    def mark(done: bool) -> str:
        return "cached" if done else "to do"

    tasks = grid.tasks
    print(f"sweep {cfg.name}: {len(grid.models)} model(s), {sum(len(m.variants) for m in grid.models)} variant(s), "
          f"{len(tasks)} task(s); work dir {store.root}")
    for mj in grid.models:
        print(f"\n{mj.model.name} ({mj.source.describe()})")
        if any(v.method for v in mj.variants):
            extras = ", ".join(sorted(mj.needs)) or "routed statistics only"
            print(f"  calibration {mj.calibration_key} [{mark(store.is_done('calibration', mj.calibration_key))}] "
                  f"({extras})")
        for v in mj.variants:
            stages = []
            if v.method:
                evicted = store.is_evicted("checkpoint", v.checkpoint_key)
                stages += [f"plan {mark(store.is_done('plan', v.plan_key))}",
                           "checkpoint evicted" if evicted else
                           f"checkpoint {mark(store.is_done('checkpoint', v.checkpoint_key))}"]
            done = sum(store.is_done("eval", k) for k in v.eval_keys.values())
            stages.append(f"eval {done}/{len(v.eval_keys)} cached")
            print(f"  {v.method_name:<20} {v.ratio:<5g} " + ", ".join(stages))
    print(f"\ntasks: {', '.join(t.name + (f' (limit {t.limit})' if t.limit else '') for t in tasks)}")
    if estimate is not None:
        from harness.sweep.costs import format_estimate

        print("\n".join(format_estimate(estimate)))


def preflight(cfg: SweepConfig, grid: Grid, store: Store, estimate, force: Sequence[str] = (), jobs=()) -> list[str]:
    """What would stop the sweep after heavy work, checked before it (harness.sweep.preflight), for the stages still
    to do (`jobs`): the calibration data, the judge, tensor parallelism, GPU memory for serving and calibration."""
    from harness.sweep.preflight import calibration_data_problems, judge_problems, serving_problems

    problems = calibration_data_problems(cfg, grid, store, jobs, force)
    problems += judge_problems(cfg, grid, store, force)
    if estimate is not None:
        problems += serving_problems(cfg, grid, store, estimate, force)
    return problems


def run(sweep: ValidatedSweep, *, filters: Filters | None = None, force: Sequence[str] = (), dry: bool = False,
        progress: bool = True, until: str = "eval", executor: str | None = None,
        ray_address: str | None = None) -> int:
    """Run (or resume) a validated sweep; returns the exit code (0 = everything succeeded)."""
    cfg = sweep.cfg
    from harness.serving.records import ServerRecords
    from harness.sweep.executors import get_executor
    from harness.sweep.stages import StageContext
    from harness.sweep.stages.collect import collect_results, write_outputs

    store = Store(cfg.work_path)
    grid = build_grid(sweep, filters or Filters())
    jobs = job_graph(cfg, grid, store, until=until, force=force, checkpoint_memory_gb=cfg.ray.checkpoint_memory_gb)
    estimate = None
    if dry or jobs:  # a finished sweep re-run needs no estimate (and reads no weights' headers)
        from harness.sweep.costs import estimate_from_grid

        try:
            estimate = estimate_from_grid(cfg, grid, store, jobs, tasks=dry)
        except Exception as exc:  # noqa: BLE001 — an estimate informs; it never stops a sweep
            log.warning("no cost estimate (%s: %s); the disk and GPU-memory preflights are skipped",
                        type(exc).__name__, exc)
    problems = preflight(cfg, grid, store, estimate, force, jobs)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        print(f"error: {cfg.name}: {len(problems)} problem(s) found before any work:\n{listing}", file=sys.stderr)
        return 2
    if dry:
        dry_run(cfg, store, grid, estimate)
        return 0
    orphans = ServerRecords(store.root).reap_orphans()
    if orphans:
        print(f"stopped {orphans} vLLM process(es) left by an interrupted run")
    name = executor or cfg.executor
    options = {"address": ray_address or cfg.ray.address, "max_retries": cfg.ray.max_retries} if name == "ray" else {}
    ctx = StageContext(cfg, grid, frozenset(force), progress)
    started = time.monotonic()
    try:
        graph = get_executor(name, **options).run(jobs, ctx)
        if cfg.checkpoints == "evict_after_eval":  # also variants evaluated before the option was set
            from harness.sweep.stages.checkpoint import evict_if_evaluated

            for mj in grid.models:
                for v in mj.variants:
                    evict_if_evaluated(ctx, mj, v)
    finally:
        ctx.close()
    table, sample_table = collect_results(cfg, store, grid)
    written = write_outputs(cfg, table, sample_table)
    missing = [(v.label, t) for mj in grid.models for v in mj.variants for t, k in v.eval_keys.items()
               if until == "eval" and not store.is_done("eval", k)]
    _summary(cfg, table, written, graph.failures, missing, time.monotonic() - started)
    return 0 if not missing and not graph.failures else 1


def _summary(cfg, table, written, failed, missing, elapsed_s: float) -> None:
    print(f"\nsweep {cfg.name} finished in {elapsed_s:.1f} s")
    if table is not None:
        scores = table[table["task"] == table["category"]]
        if not scores.empty:
            pivot = scores.pivot_table(index=["model", "method", "ratio"], columns="task", values="value")
            print(pivot.round(3).to_string())
    for path in written[:3]:
        print(f"wrote {path}")
    if failed:
        print(f"\n{len(failed)} failure(s) (logs under {cfg.work_path / 'logs'}, records under "
              f"{cfg.work_path / 'failures'}):")
        for line in failed:
            print(f"  - {line}")
    if missing:
        print(f"\n{len(missing)} task result(s) missing; re-run to retry them.")


def _raise_system_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="sweep YAML file")
    parser.add_argument("--dry-run", action="store_true", help="validate, print the jobs and what is cached")
    parser.add_argument("--only", action="append", default=[], metavar="KIND=VALUES",
                        help="filter: model=NAME, method=NAME (baseline too), ratio=R, task=NAME; repeatable")
    parser.add_argument("--force", action="append", default=[], choices=PIPELINE,
                        help="recompute this stage (and so everything after it) for the selected jobs")
    parser.add_argument("--until", choices=PIPELINE, default="eval",
                        help="stop after this stage (e.g. write every checkpoint now, evaluate later)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--executor", choices=["local", "ray"], default=None,
                        help="run the jobs in this process (local, the default) or on a Ray cluster (ray)")
    parser.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                        help="join this Ray cluster (default: RAY_ADDRESS, the sweep's ray.address, or a local one)")
    rehearsal = parser.add_argument_group("rehearsal", "the sweep as written, on tiny stand-ins of its models, "
                                          "on this machine (CPU) in minutes: the step before a cluster launch")
    rehearsal.add_argument("--rehearse", action="store_true", help="rehearse instead of running for real")
    rehearsal.add_argument("--rehearsal-dir", default=None, metavar="DIR",
                           help="where the rehearsal keeps its stand-ins, work and results (default rehearsals/<name>)")
    rehearsal.add_argument("--rehearse-samples", type=int, default=2, metavar="N",
                           help="samples per task in the rehearsal (default 2)")
    rehearsal.add_argument("--data-dir", default=None, metavar="DIR",
                           help="offline benchmark data for the rehearsal (default: the sweep's data_dir, else "
                           "../shared/datasets)")
    args = parser.parse_args(argv)
    # Job logs get INFO; the console only warnings with --no-progress.
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING if args.no_progress else logging.INFO)
    console.setFormatter(RedactingFormatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.INFO, handlers=[console])
    report = None
    try:
        if args.rehearse:
            from harness.sweep.rehearsal import prepare

            sweep, report = prepare(args.sweep, root=args.rehearsal_dir, data_dir=args.data_dir,
                                  samples=args.rehearse_samples)
            print("\n".join(report.lines()))
        else:
            sweep = load_sweep(args.sweep)
    except (SweepConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # SIGTERM (a scheduler's cancel) unwinds like Ctrl-C, so vLLM servers are stopped on the way out.
    signal.signal(signal.SIGTERM, _raise_system_exit)
    force = set(args.force)
    # Recomputing a stage recomputes what depends on it.
    for i, stage in enumerate(PIPELINE):
        if stage in force:
            force.update(PIPELINE[i:])
    until = args.until  # a rehearsal stops where its stand-ins must, if that is earlier
    if report is not None and report.until and PIPELINE.index(report.until) < PIPELINE.index(until):
        until = report.until
    code = run(sweep, filters=Filters.parse(args.only), force=sorted(force), dry=args.dry_run,
               progress=not args.no_progress, until=until, executor=args.executor, ray_address=args.ray_address)
    if report is not None:
        for task, why in report.tasks_not_rehearsed.items():
            print(f"not rehearsed: {task}: {why}")
        verdict = "dry run" if args.dry_run else "passed" if code == 0 else "FAILED"
        print(f"rehearsal {verdict}: {len(report.tasks_rehearsed)} task(s) rehearsed, "
              f"{len(report.tasks_not_rehearsed)} not; report {sweep.cfg.work_path.parent / 'rehearsal.json'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
