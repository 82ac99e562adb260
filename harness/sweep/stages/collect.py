"""Collect: the tidy results table, the per-sample table and the figures, rebuilt from the store.

Rebuilt from the stored outputs at the end of every run (whatever ran where), so the table is
the same for a fresh, a resumed or a distributed run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from harness.sweep.config import SweepConfig
from harness.sweep.grid import Grid
from harness.sweep.store import Store

log = logging.getLogger("harness.sweep")
# Provenance fields that say when, not how: left out of the table so a resumed sweep's table equals a fresh one's.
WALL_CLOCK = ("started", "finished", "duration_s", "timestamp", "wall_s")


def _text(value: Any) -> str | None:
    """A record field as text for the samples table: strings as they are, anything else as JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def sample_details(task: str, record) -> dict[str, Any]:
    """The samples-table columns beyond the score: what was asked and answered, and its failure kinds."""
    from harness.tasks.failures import KINDS, failure_label, sample_failures

    found = sample_failures(task, record)
    extra = record.model_extra or {}
    return {"prompt": _text(record.prompt), "output": record.output, "extracted": _text(record.extracted),
            "target": _text(record.target), "finish_reason": extra.get("finish_reason"),
            "completion_tokens": extra.get("completion_tokens"),
            "failures": failure_label(found),
            **{f"failure_{kind}": (found or {}).get(kind) for kind in KINDS}}


def collect_results(cfg: SweepConfig, store: Store, grid: Grid):
    """(results table, samples table), either None when nothing is stored yet."""
    import pandas as pd

    from harness.results.table import measured_base, result_rows, rows_to_frame
    from harness.tasks.base import TaskResult
    from harness.tasks.runner import read_task_result

    rows: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    for mj in grid.models:
        for v in mj.variants:
            stage, key = ("params", mj.params_key) if v.method is None else ("checkpoint", v.checkpoint_key)
            params = store.done_meta(stage, key) if store.is_done(stage, key) else {}
            results: list[TaskResult] = []
            for spec in grid.tasks:
                key = v.eval_keys[spec.name]
                if not store.is_done("eval", key):
                    continue
                result = read_task_result(store.dir("eval", key))
                results.append(result)  # result_rows reads the failure kinds from its samples
                for record in result.samples:
                    if (record.model_extra or {}).get("excluded"):  # e.g. an unparseable judge reply
                        continue
                    samples.append({"model": mj.model.name, "method": v.method_name, "ratio": v.ratio,
                                    "task": result.task, "category": result.category,
                                    "sample_id": record.sample_id, "score": record.score,
                                    **sample_details(result.task, record)})
            base = measured_base(mj.model.name, v.method_name, v.ratio, family=mj.model.family or "", params=params)

            def provenance(r: TaskResult, v=v) -> str:
                stable = {k: x for k, x in r.provenance.items() if k not in WALL_CLOCK}
                return json.dumps({"eval_key": v.eval_keys[r.task], "checkpoint_key": v.checkpoint_key,
                                   "provenance": stable}, sort_keys=True, default=str)

            rows += result_rows(results, base, category_tasks=cfg.category_tasks, provenance=provenance)
    table = rows_to_frame(rows) if rows else None
    if table is not None:
        table = table.sort_values(["model", "method", "ratio", "task", "metric"], kind="stable").reset_index(drop=True)
    sample_table = pd.DataFrame(samples) if samples else None
    if sample_table is not None:
        sample_table = sample_table.sort_values(["model", "method", "ratio", "task", "sample_id"], kind="stable")
        sample_table = sample_table.reset_index(drop=True)
    return table, sample_table


# Beside the outputs: what they were made from, so a re-run whose tables did not change leaves them as they are.
OUTPUTS_RECORD = ".outputs.json"


def _outputs_fingerprint(cfg: SweepConfig, table, sample_table) -> str:
    """A hash of everything the written outputs depend on: both tables, the figure and report switches, and the
    code that writes and draws them (harness.results), so a changed table or a changed figure redraws."""
    import hashlib

    import harness

    digest = hashlib.sha256(json.dumps([harness.__version__, cfg.plots, cfg.report]).encode())
    for frame in (table, sample_table):
        digest.update(b"\0" if frame is None else frame.to_csv(index=False).encode())
    for source in sorted((Path(harness.__file__).parent / "results").glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()


def _unchanged_outputs(out: Path, fingerprint: str) -> list[Path] | None:
    """The outputs written from the same tables and code, when all of them are still there; else None."""
    try:
        record = json.loads((out / OUTPUTS_RECORD).read_text())
    except (OSError, ValueError):
        return None
    paths = [out / p for p in record.get("written", [])]
    if record.get("fingerprint") != fingerprint or not paths or not all(p.is_file() for p in paths):
        return None
    return paths


def write_outputs(cfg: SweepConfig, table, sample_table) -> list[Path]:
    """The results and samples tables, the figures and the report. A fully cached re-run finds the same tables:
    then nothing is rewritten (drawing the figures and the report takes most of such a run's time)."""
    out = cfg.results_path
    written: list[Path] = []
    if table is None:
        return written
    fingerprint = _outputs_fingerprint(cfg, table, sample_table)
    unchanged = _unchanged_outputs(out, fingerprint)
    if unchanged is not None:
        log.info("results unchanged since the last run: %s left as they are", out)
        return unchanged
    written, complete = _write_outputs(cfg, table, sample_table)
    if not complete:  # a figure or the report failed: tried again next run
        (out / OUTPUTS_RECORD).unlink(missing_ok=True)
        return written
    from harness.util.atomic import atomic_write

    record = {"fingerprint": fingerprint, "written": [str(p.relative_to(out)) for p in written
                                                      if p.is_relative_to(out)]}
    atomic_write(out / OUTPUTS_RECORD, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))
    return written


def _write_outputs(cfg: SweepConfig, table, sample_table) -> tuple[list[Path], bool]:
    """(what was written, whether everything asked for was)."""
    from harness.results.table import write_results, write_samples

    out = cfg.results_path
    written: list[Path] = []
    complete = True
    for suffix in (".parquet", ".csv"):
        write_results(table, out / f"results{suffix}")
        written.append(out / f"results{suffix}")
    if sample_table is not None:
        write_samples(sample_table, out / "samples.parquet")
        written.append(out / "samples.parquet")
    if cfg.plots:
        try:
            from harness.results.plots import render_all

            written += render_all(table, out / "plots", formats=("png",))
        except Exception as exc:  # noqa: BLE001 — a figure that cannot be drawn (e.g. one point) is not fatal
            log.warning("figures not drawn: %s", exc)
            complete = False
    if cfg.report and sample_table is not None:
        try:
            from harness.results.report import write_report

            written.append(write_report(out))
        except Exception as exc:  # noqa: BLE001 — the tables are written; a report that fails is said, not fatal
            log.warning("report not written: %s: %s (python -m harness.report %s retries it)",
                        type(exc).__name__, exc, out)
            complete = False
    return written, complete
