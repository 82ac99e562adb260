"""The project's one tidy results table, and the per-sample records that comparisons need.

Why one schema: the sweep runner writes it, the plots and the comparison read it, and the
paper's own numbers (``results/paper/``) are stored in it too, so a harness result and a
paper number for the same (model, method, ratio, task) sit side by side.

A results row is one number: (model, method, ratio, task, metric) -> value.

=====================  ======  =========================================================
column                 type    meaning
=====================  ======  =========================================================
model                  str     display name, e.g. "GLM-4.5-Air"
family                 str     transformers ``model_type`` ("glm4_moe"), or "" if unknown
method                 str     "baseline" (uncompressed) or a method name ("reap", ...)
ratio                  float   compression ratio in [0, 1): 0.0 for the baseline
task                   str     benchmark ("evalplus") or a category aggregate ("coding":
                               the mean of the category's task scores)
category               str     "coding", "math", "creative_writing", "mc", "agentic", ...
metric                 str     "accuracy", "pass@1", ...
value                  float   a fraction in [0, 1], never percent
total_params_b         float   total parameters, billions (NaN if unknown)
activated_params_b     float   parameters used per token, billions (NaN if unknown)
source                 str     "harness" (measured here) or "paper" (reported)
approximate            bool    True when the value was digitised from a figure
n_samples              float   number of scored samples (NaN if unknown)
series                 str     optional display group for lines (e.g. "Gemma"); "" = none
harness_version        str     version of the harness that wrote the row ("" for paper rows)
provenance             str     JSON object: how the number was made (figure, pixel
                               uncertainty, recipe hash, prompt hashes, ...)
=====================  ======  =========================================================

Per-sample records (for paired comparisons) have the columns of ``SAMPLE_COLUMNS``: one
score in [0, 1] per (model, method, ratio, task, sample_id). A sweep's ``samples.parquet`` also
has the columns of ``SAMPLE_TEXT_COLUMNS`` (what was asked and answered, for the report) and the
failure kinds of ``harness.tasks.failures``: ``failures`` (the kinds present, comma-separated) and one
``failure_<kind>`` column per kind (True / False, None where not applicable or unknown).
Failure rates are results rows with metric ``failure_rate:<kind>`` per generative task.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.util.atomic import atomic_write

SOURCES = ("harness", "paper")
STR_COLUMNS = ("model", "family", "method", "task", "category", "metric", "source", "series",
               "harness_version", "provenance")
FLOAT_COLUMNS = ("ratio", "value", "total_params_b", "activated_params_b", "n_samples")
RESULT_COLUMNS = (
    "model", "family", "method", "ratio", "task", "category", "metric", "value",
    "total_params_b", "activated_params_b", "source", "approximate", "n_samples", "series",
    "harness_version", "provenance",
)
# Columns a writer must give; the others have defaults.
REQUIRED_COLUMNS = ("model", "method", "ratio", "task", "category", "metric", "value", "source")
DEFAULTS: dict[str, object] = {
    "family": "", "total_params_b": math.nan, "activated_params_b": math.nan, "approximate": False,
    "n_samples": math.nan, "series": "", "harness_version": "", "provenance": "{}",
}
KEY_COLUMNS = ("model", "method", "ratio", "task", "metric", "source")
SAMPLE_COLUMNS = ("model", "method", "ratio", "task", "category", "sample_id", "score")
# Optional per-sample text: the prompt (JSON of the chat messages, or the text), the reply, the extracted answer and
# the target (JSON unless plain text), the server's finish_reason and the reply's length in tokens.
SAMPLE_TEXT_COLUMNS = ("prompt", "output", "extracted", "target", "finish_reason", "completion_tokens")


class ResultsError(ValueError):
    """A results or samples table breaks the schema; the message lists every problem."""


class ResultRow(BaseModel):
    """One result, validated on construction (for writers that build rows one by one)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    family: str = ""
    method: str = Field(min_length=1)
    ratio: float = Field(ge=0.0, lt=1.0)
    task: str = Field(min_length=1)
    category: str = Field(min_length=1)
    metric: str = Field(min_length=1)
    value: float = Field(ge=0.0, le=1.0)
    total_params_b: float = math.nan
    activated_params_b: float = math.nan
    source: str = "harness"
    approximate: bool = False
    n_samples: float = math.nan
    series: str = ""
    harness_version: str = ""
    provenance: str = "{}"

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        if v not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {v!r}")
        return v

    @field_validator("provenance", mode="before")
    @classmethod
    def _json_provenance(cls, v: object) -> str:
        if isinstance(v, dict):
            return json.dumps(v, sort_keys=True)
        if not isinstance(v, str) or not isinstance(json.loads(v), dict):
            raise ValueError("provenance must be a JSON object (dict or its JSON text)")
        return v


def rows_to_frame(rows: Iterable[ResultRow | dict]) -> pd.DataFrame:
    """Validated rows -> a results DataFrame in the canonical column order."""
    records = [(r if isinstance(r, ResultRow) else ResultRow(**r)).model_dump() for r in rows]
    return validate_results(pd.DataFrame(records, columns=list(RESULT_COLUMNS)))


def _fail(problems: list[str], what: str) -> None:
    if problems:
        raise ResultsError(f"invalid {what} table:\n  - " + "\n  - ".join(problems))


def _rows(mask: pd.Series, limit: int = 8) -> str:
    idx = list(mask[mask].index[:limit])
    more = int(mask.sum()) - len(idx)
    return f"rows {idx}" + (f" (+{more} more)" if more > 0 else "")


def validate_results(df: pd.DataFrame) -> pd.DataFrame:
    """Check and coerce a results table; returns a copy in canonical column order and dtypes.

    Raises ResultsError naming every missing column and the rows of every bad value, so a
    writer sees all its mistakes at once rather than one per run.
    """
    problems: list[str] = []
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        _fail([f"missing required columns: {missing}"], "results")
    unknown = [c for c in df.columns if c not in RESULT_COLUMNS]
    if unknown:
        problems.append(f"unknown columns: {unknown} (allowed: {list(RESULT_COLUMNS)})")
    out = df.copy().reset_index(drop=True)
    for col, default in DEFAULTS.items():
        if col not in out.columns:
            out[col] = default
    for col in FLOAT_COLUMNS:
        num = pd.to_numeric(out[col], errors="coerce")
        bad = num.isna() & out[col].notna() & (out[col].astype(str).str.strip() != "")
        if bad.any():
            problems.append(f"column {col!r} is not numeric in {_rows(bad)}")
        out[col] = num.astype("float64")
    for col in STR_COLUMNS:
        out[col] = out[col].astype(object).where(out[col].notna(), "").astype(str)
    out["approximate"] = out["approximate"].map(
        lambda v: str(v).strip().lower() in ("true", "1", "yes") if not isinstance(v, bool) else v
    ).astype(bool)
    for col in ("model", "method", "task", "category", "metric"):
        empty = out[col].str.strip() == ""
        if empty.any():
            problems.append(f"column {col!r} is empty in {_rows(empty)}")
    for col in ("value", "ratio"):
        nan = out[col].isna()
        if nan.any():
            problems.append(f"column {col!r} is missing in {_rows(nan)}")
    bad_value = (out["value"] < 0) | (out["value"] > 1)
    if bad_value.any():
        problems.append(f"value outside [0, 1] (percent instead of a fraction?) in {_rows(bad_value)}")
    bad_ratio = (out["ratio"] < 0) | (out["ratio"] >= 1)
    if bad_ratio.any():
        problems.append(f"ratio outside [0, 1) in {_rows(bad_ratio)}")
    base_ratio = (out["method"] == "baseline") & (out["ratio"] != 0)
    if base_ratio.any():
        problems.append(f"baseline rows must have ratio 0 in {_rows(base_ratio)}")
    bad_source = ~out["source"].isin(SOURCES)
    if bad_source.any():
        problems.append(f"source not in {SOURCES} in {_rows(bad_source)}")
    for col in ("total_params_b", "activated_params_b"):
        neg = out[col] <= 0
        if neg.any():
            problems.append(f"column {col!r} must be positive (or NaN) in {_rows(neg)}")

    def _is_json_object(text: str) -> bool:
        try:
            return isinstance(json.loads(text or "{}"), dict)
        except json.JSONDecodeError:
            return False

    bad_prov = ~out["provenance"].map(_is_json_object)
    if bad_prov.any():
        problems.append(f"provenance is not a JSON object in {_rows(bad_prov)}")
    dup = out.duplicated(list(KEY_COLUMNS), keep=False)
    if dup.any():
        problems.append(f"duplicate (model, method, ratio, task, metric, source) in {_rows(dup)}")
    _fail(problems, "results")
    return out[list(RESULT_COLUMNS)]


def validate_samples(df: pd.DataFrame) -> pd.DataFrame:
    """Check and coerce a per-sample records table (one score in [0, 1] per sample).

    The columns of SAMPLE_COLUMNS come first; the optional text and failure columns are kept after them."""
    missing = [c for c in SAMPLE_COLUMNS if c not in df.columns]
    if missing:
        _fail([f"missing columns: {missing}"], "samples")
    extra = [c for c in df.columns if c not in SAMPLE_COLUMNS and (c in SAMPLE_TEXT_COLUMNS or c == "failures"
                                                                    or c.startswith("failure_"))]
    out = df[list(SAMPLE_COLUMNS) + extra].copy().reset_index(drop=True)
    problems: list[str] = []
    for col in ("ratio", "score"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype("float64")
        if out[col].isna().any():
            problems.append(f"column {col!r} missing or not numeric in {_rows(out[col].isna())}")
    bad = (out["score"] < 0) | (out["score"] > 1)
    if bad.any():
        problems.append(f"score outside [0, 1] in {_rows(bad)}")
    for col in ("model", "method", "task", "category", "sample_id"):
        out[col] = out[col].astype(str)
    dup = out.duplicated(["model", "method", "ratio", "task", "sample_id"], keep=False)
    if dup.any():
        problems.append(f"duplicate (model, method, ratio, task, sample_id) in {_rows(dup)}")
    _fail(problems, "samples")
    return out


# ---------------------------------------------------------------- reading and writing

TABLE_SUFFIXES = (".csv", ".parquet")


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, directories expanded to the CSV/parquet files inside (sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix in TABLE_SUFFIXES and f.is_file())
        elif p.suffix in TABLE_SUFFIXES and p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"not a CSV/parquet file or a directory: {p}")
    return files


def _read_table(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"sample_id": str})


def read_results(*paths: str | Path) -> pd.DataFrame:
    """Read and validate results from files/directories; each file is validated alone so
    an error names the file. Rows from different files may repeat a key (two readings of
    the same number); consumers decide how to combine them."""
    frames = []
    for f in expand_paths(paths):
        try:
            frames.append(validate_results(_read_table(f)))
        except ResultsError as e:
            raise ResultsError(f"{f}: {e}") from None
    if not frames:
        raise FileNotFoundError(f"no results files in {[str(p) for p in paths]}")
    return pd.concat(frames, ignore_index=True)


def read_samples(*paths: str | Path) -> pd.DataFrame:
    """Read and validate per-sample records from files/directories."""
    frames = [validate_samples(_read_table(f)) for f in expand_paths(paths)]
    if not frames:
        raise FileNotFoundError(f"no sample files in {[str(p) for p in paths]}")
    return validate_samples(pd.concat(frames, ignore_index=True))


def atomic_write_table(df: pd.DataFrame, path: Path) -> None:
    """Write next to the target then rename, so readers never see half a file."""
    path = Path(path)
    if path.suffix == ".parquet":
        atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))
    elif path.suffix == ".csv":
        atomic_write(path, lambda tmp: df.to_csv(tmp, index=False, float_format="%.6g"))
    else:
        raise ValueError(f"unsupported table format {path.suffix!r} (use .csv or .parquet)")


def _redacted(df: pd.DataFrame) -> pd.DataFrame:
    """The table with secrets (harness.util.redaction) replaced in every text cell (e.g. provenance JSON)."""
    from harness.util.redaction import redact, secret_values

    known = secret_values()
    if not known:
        return df
    out = df.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(lambda v: redact(v, known) if isinstance(v, str) else v)
    return out


def write_results(df: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """Validate then atomically write a results table (.csv or .parquet), secrets redacted; returns it."""
    valid = _redacted(validate_results(df))
    atomic_write_table(valid, Path(path))
    return valid


def write_samples(df: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """Validate then atomically write per-sample records (.csv or .parquet), secrets redacted."""
    valid = _redacted(validate_samples(df))
    atomic_write_table(valid, Path(path))
    return valid


# -- rows from task results: the one path for the sweep and `python -m harness.evaluate` ----------------
def measured_base(model: str, method: str, ratio: float, *, family: str = "",
                  params: dict | None = None) -> dict:
    """The columns every row of one variant measured here shares (`params`: the stored parameter counts,
    total_params / activated_params; NaN when not known)."""
    import harness

    params = params or {}
    return {"model": model, "family": family, "method": method, "ratio": ratio,
            "total_params_b": params.get("total_params", math.nan) / 1e9,
            "activated_params_b": params.get("activated_params", math.nan) / 1e9,
            "source": "harness", "harness_version": harness.__version__}


def tabulated(metric: str, value: float | None) -> bool:
    """Metrics that go into the table: fractions, not counts (n_*) or raw means (mean_*)."""
    return (value is not None and not metric.startswith(("n_", "mean_")) and math.isfinite(float(value))
            and 0.0 <= float(value) <= 1.0)


def result_rows(results: Sequence, base: dict, *, category_tasks: dict[str, list[str]] | None = None,
                provenance=None) -> list[dict]:
    """Tidy rows for one served model: every tabulated metric of every task that ran (its "score" too, and the
    `failure_rate:<kind>` of its samples' failure kinds), then one `accuracy` row per category, scored by
    harness.tasks.categories over `category_tasks` (default: every task of the category that ran).
    `provenance(result)` gives a task row's provenance."""
    from harness.tasks.categories import category_score
    from harness.tasks.failures import failure_rates

    rows = []
    for r in results:
        if r.status != "ok":
            continue
        prov = provenance(r) if provenance else {}
        metrics = dict(r.metrics)
        if r.score is not None:
            metrics.setdefault("score", r.score)
        # How the replies failed (harness.tasks.failures), from the samples the result carries.
        metrics.update(failure_rates(r.task, [s for s in r.samples if not (s.model_extra or {}).get("excluded")]))
        for metric, value in sorted(metrics.items()):
            if tabulated(metric, value):
                rows.append({**base, "task": r.task, "category": r.category, "metric": metric, "value": float(value),
                             "n_samples": r.n_samples, "provenance": prov})
    for category in sorted({r.category for r in results}):
        members = (category_tasks or {}).get(category)
        score = category_score(category, [r for r in results if members is None or r.task in members])
        if score is None:
            continue
        n = sum(r.n_samples for r in results if r.task in score.tasks)
        rows.append({**base, "task": category, "category": category, "metric": "accuracy", "value": score.value,
                     "n_samples": n, "provenance": {"definition": score.definition, "tasks": score.tasks,
                                                    "missing": score.missing}})
    return rows
