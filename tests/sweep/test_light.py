"""Issue 26, validation stays light: what a fully cached re-run or a dry run does not redo.

(The calibration data check's scoping is in tests/sweep/test_sweep_config.py; seconds are measured by
benchmarks/validation_light.py, not here.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from harness.results.table import rows_to_frame
from harness.sweep.stages.collect import OUTPUTS_RECORD, write_outputs

REPO = Path(__file__).resolve().parents[2]


def _table(value: float):
    rows = [{"model": "m", "method": method, "ratio": ratio, "task": "coding", "category": "coding",
             "metric": "accuracy", "value": value if method == "frequency" else 0.5, "total_params_b": total}
            for method, ratio, total in (("baseline", 0.0, 2.0), ("frequency", 0.5, 1.0))]
    return rows_to_frame(rows)


def test_outputs_are_rewritten_only_when_their_tables_change(tmp_path):
    cfg = SimpleNamespace(results_path=tmp_path / "results", plots=True, report=False)
    first = write_outputs(cfg, _table(0.25), None)
    assert {p.name for p in first} >= {"results.parquet", "results.csv"} and any(p.suffix == ".png" for p in first)
    stamps = {p: p.stat().st_mtime_ns for p in first}
    csv = (tmp_path / "results" / "results.csv").read_text()

    again = write_outputs(cfg, _table(0.25), None)
    assert again == first and {p: p.stat().st_mtime_ns for p in again} == stamps, "unchanged tables were rewritten"

    changed = write_outputs(cfg, _table(0.75), None)  # another score: everything is written again
    assert all(p.stat().st_mtime_ns != stamps[p] for p in changed if p in stamps)
    assert (tmp_path / "results" / "results.csv").read_text() != csv
    stamps = {p: p.stat().st_mtime_ns for p in changed}

    figure = next(p for p in changed if p.suffix == ".png")
    figure.unlink()  # an output gone: written again
    restored = write_outputs(cfg, _table(0.75), None)
    assert figure.is_file() and all(p.stat().st_mtime_ns != stamps[p] for p in restored if p != figure)

    cfg.plots = False  # a switch of what is drawn counts too
    assert not any(p.suffix == ".png" for p in write_outputs(cfg, _table(0.75), None))
    assert (tmp_path / "results" / OUTPUTS_RECORD).is_file()


def test_validating_a_sweep_leaves_the_tokenizer_stack_alone(tmp_path):
    """Loading and validating the demo sweep (a local model, local calibration data, ten tasks) imports neither
    transformers nor vLLM: the tokenizer is for a calibration that still has work (the preflight). (torch is
    still imported: the compression methods' modules, which validate their options, import it.)"""
    code = ("import sys\n"
            "from harness.sweep.config import load_sweep\n"
            f"load_sweep({str(REPO / 'sweeps' / 'tiny.yaml')!r})\n"
            "print(sorted(m for m in ('transformers', 'vllm') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
