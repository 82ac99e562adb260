"""The results schema: validation names bad rows, writes are atomic and round-trip."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from harness.results.table import (
    RESULT_COLUMNS,
    ResultRow,
    ResultsError,
    read_results,
    read_samples,
    rows_to_frame,
    validate_results,
    write_results,
    write_samples,
)

PAPER = __import__("pathlib").Path(__file__).resolve().parents[2] / "results" / "paper"


def row(**kw) -> dict:
    base = dict(model="M", method="reap", ratio=0.25, task="gsm8k", category="math", metric="accuracy",
                value=0.5, source="harness")
    return {**base, **kw}


def test_row_model_defaults_and_provenance_dict():
    r = ResultRow(**row(provenance={"recipe": "abc"}))
    assert json.loads(r.provenance) == {"recipe": "abc"}
    assert math.isnan(r.total_params_b) and r.approximate is False


@pytest.mark.parametrize("bad", [dict(value=55.0), dict(ratio=1.5), dict(source="blog"), dict(model="")])
def test_row_model_rejects(bad):
    with pytest.raises(ValueError):
        ResultRow(**row(**bad))


def test_validate_lists_every_problem_with_rows():
    df = pd.DataFrame([row(), row(task="mmlu", value=72.0), row(task="x", method="baseline", ratio=0.5),
                       row(task="y", source="blog")])
    with pytest.raises(ResultsError) as e:
        validate_results(df)
    msg = str(e.value)
    assert "value outside [0, 1]" in msg and "rows [1]" in msg
    assert "baseline rows must have ratio 0" in msg and "rows [2]" in msg
    assert "source not in" in msg and "rows [3]" in msg


def test_validate_missing_and_unknown_columns():
    with pytest.raises(ResultsError, match="missing required columns: \\['value'\\]"):
        validate_results(pd.DataFrame([row()]).drop(columns="value"))
    with pytest.raises(ResultsError, match="unknown columns: \\['colour'\\]"):
        validate_results(pd.DataFrame([row(colour="red")]))


def test_duplicate_keys_rejected():
    with pytest.raises(ResultsError, match="duplicate"):
        validate_results(pd.DataFrame([row(), row(value=0.6)]))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_roundtrip_and_atomic(tmp_path, suffix):
    df = rows_to_frame([row(), row(method="new_method", n_samples=100, approximate=True,
                                   provenance={"k": 1}, total_params_b=12.5)])
    path = tmp_path / "sub" / f"r{suffix}"
    write_results(df, path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    back = read_results(path)
    assert list(back.columns) == list(RESULT_COLUMNS)
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert back["approximate"].dtype == bool and back.loc[1, "n_samples"] == 100


def test_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "r.csv"
    write_results(rows_to_frame([row()]), path)
    before = path.read_text()
    with pytest.raises(ResultsError):
        write_results(pd.DataFrame([row(value=2.0)]), path)
    assert path.read_text() == before


def test_samples_roundtrip_and_validation(tmp_path):
    s = pd.DataFrame(dict(model="M", method="reap", ratio=0.5, task="t", category="c",
                          sample_id=["001", "002"], score=[1.0, 0.0]))
    write_samples(s, tmp_path / "s.csv")
    back = read_samples(tmp_path)
    assert list(back["sample_id"]) == ["001", "002"]  # ids stay strings
    with pytest.raises(ResultsError, match="score outside"):
        write_samples(s.assign(score=[1.0, 3.0]), tmp_path / "bad.csv")


def test_paper_results_are_valid_and_complete():
    df = read_results(PAPER)
    assert set(df["source"]) == {"paper"}
    fig1 = df[df["provenance"].str.contains("combined_performance_vs_params")]
    # 7 baselines + 5 models x 5 methods x 2 ratios + 2 models x 3 pruning methods x 2 ratios, per panel
    assert len(fig1) == 2 * (7 + 50 + 12)
    assert fig1["approximate"].all()
    table = df[df["provenance"].str.contains("large-scale")]
    assert not table["approximate"].any() and len(table) == 14 * 9
