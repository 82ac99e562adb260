"""Does a method really beat another? Paired bootstrap confidence intervals per task and category.

Why paired: both methods answer the same samples, so the per-sample difference removes the
(large) spread in sample difficulty and the interval reflects only the methods' difference.
Category scores are the mean of their task scores, so the category interval resamples each
task's samples (jointly: one draw per task per bootstrap round) and averages task means.

    python -m harness.compare SAMPLES... --baseline reap --method NEW [--model M] [--ratio R]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from harness.results.table import atomic_write_table, read_results, read_samples

DEFAULT_RESAMPLES = 10_000
CHUNK = 1_000  # bootstrap rounds per vectorised block: bounds memory at CHUNK x n indices


def paired_diffs(samples: pd.DataFrame, model: str, baseline: str, method: str, ratio: float) -> pd.DataFrame:
    """Per-sample (method - baseline) scores, paired by (task, sample_id).

    The "baseline" method (uncompressed model) is taken at ratio 0 whatever ``ratio`` is.
    """
    def side(name: str) -> pd.DataFrame:
        r = 0.0 if name == "baseline" else ratio
        s = samples[(samples["model"] == model) & (samples["method"] == name) & np.isclose(samples["ratio"], r)]
        if s.empty:
            raise ValueError(f"no samples for model={model!r} method={name!r} ratio={r:g}")
        return s[["task", "category", "sample_id", "score"]]

    merged = side(method).merge(side(baseline), on=["task", "sample_id"], suffixes=("_m", "_b"))
    if merged.empty:
        raise ValueError(f"{method} and {baseline} share no (task, sample_id) for {model} at {ratio:g}")
    merged["diff"] = merged["score_m"] - merged["score_b"]
    return merged.rename(columns={"category_m": "category"})[["task", "category", "sample_id", "score_m",
                                                            "score_b", "diff"]]


def bootstrap_task_means(diff: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_resamples`` resamples (with replacement) of ``diff``, vectorised in chunks."""
    n = len(diff)
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, CHUNK):
        stop = min(start + CHUNK, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = diff[idx].mean(axis=1)
    return out


def _ci(boot: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def compare(pairs: pd.DataFrame, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
            level: float = 0.95, members: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """One row per task and per category: means, difference and its percentile bootstrap CI.

    A category is scored from its tasks' means by the rule the results table uses
    (harness.tasks.categories.combine), over `members[category]` when given (a sweep's
    `category_tasks`, as recorded in its results table), else over every task of the category."""
    from harness.tasks.categories import combine

    rng = np.random.default_rng(seed)
    rows = []
    boots: dict[str, np.ndarray] = {}
    for task, grp in pairs.groupby("task", sort=True):
        d = grp["diff"].to_numpy(dtype=np.float64)
        boots[task] = bootstrap_task_means(d, n_resamples, rng)
        lo, hi = _ci(boots[task], level)
        rows.append(dict(level="task", name=task, category=grp["category"].iloc[0], n=len(d),
                         baseline=grp["score_b"].mean(), method=grp["score_m"].mean(), diff=d.mean(),
                         ci_low=lo, ci_high=hi))
    task_rows = pd.DataFrame(rows)
    for cat, grp in task_rows.groupby("category", sort=True):
        grp = grp[[members is None or cat not in members or t in members[cat] for t in grp["name"]]]
        if grp.empty:
            continue
        tasks = list(grp["name"])
        boot = combine(cat, {t: boots[t] for t in tasks})[0]
        lo, hi = _ci(boot, level)
        base = combine(cat, dict(zip(tasks, grp["baseline"], strict=True)))[0]
        new = combine(cat, dict(zip(tasks, grp["method"], strict=True)))[0]
        rows.append(dict(level="category", name=cat, category=cat, n=int(grp["n"].sum()), baseline=base,
                         method=new, diff=new - base, ci_low=lo, ci_high=hi))
    out = pd.DataFrame(rows)
    out["significant"] = (out["ci_low"] > 0) | (out["ci_high"] < 0)
    return out


def category_members(results: pd.DataFrame, model: str, method: str, ratio: float) -> dict[str, list[str]]:
    """The tasks each category row of a results table was scored over (its provenance "tasks")."""
    rows = results[(results["model"] == model) & (results["method"] == method)
                   & np.isclose(results["ratio"], 0.0 if method == "baseline" else ratio)
                   & (results["task"] == results["category"])]
    return {r.category: json.loads(r.provenance).get("tasks", []) for r in rows.itertuples()}


def compare_samples(samples: pd.DataFrame, baseline: str, method: str, model: str | None = None,
                    ratio: float | None = None, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                    results: pd.DataFrame | None = None) -> pd.DataFrame:
    """Compare ``method`` against ``baseline`` for every (model, ratio) both have (or the one asked).

    With the sweep's `results` table, categories are scored over the tasks its category rows name."""
    m = samples[samples["method"] == method]
    combos = m[["model", "ratio"]].drop_duplicates()
    if model is not None:
        combos = combos[combos["model"] == model]
    if ratio is not None:
        combos = combos[np.isclose(combos["ratio"], ratio)]
    if combos.empty:
        raise ValueError(f"no samples of method {method!r} for model={model} ratio={ratio}")
    frames = []
    for c in combos.sort_values(["model", "ratio"]).itertuples():
        members = None
        if results is not None:
            ours, theirs = (category_members(results, c.model, m, c.ratio) for m in (method, baseline))
            members = {cat: [t for t in tasks if t in theirs.get(cat, tasks)] for cat, tasks in ours.items()}
        res = compare(paired_diffs(samples, c.model, baseline, method, c.ratio), n_resamples, seed, members=members)
        res.insert(0, "ratio", c.ratio)
        res.insert(0, "model", c.model)
        frames.append(res)
    out = pd.concat(frames, ignore_index=True)
    out.insert(2, "compared", f"{method} - {baseline}")
    return out


def format_table(res: pd.DataFrame) -> str:
    """Readable table, accuracies in percentage points."""
    show = res.copy()
    for c in ("baseline", "method"):
        show[c] = (100 * show[c]).map("{:.1f}".format)
    for c in ("diff", "ci_low", "ci_high"):
        show[c] = (100 * show[c]).map("{:+.1f}".format)
    show["95% CI"] = "[" + show["ci_low"] + ", " + show["ci_high"] + "]"
    show["sig"] = show["significant"].map({True: "*", False: ""})
    cols = ["model", "ratio", "level", "name", "n", "baseline", "method", "diff", "95% CI", "sig"]
    return show[cols].to_string(index=False)


def _read_inputs(paths: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Samples (and, for sweep results folders, their results tables) from the command line's paths."""
    sample_files, result_files = [], []
    for p in map(Path, paths):
        if p.is_dir() and (p / "samples.parquet").is_file():  # a sweep's results folder
            sample_files.append(p / "samples.parquet")
            if (p / "results.parquet").is_file():
                result_files.append(p / "results.parquet")
        else:
            sample_files.append(p)
    samples = read_samples(*sample_files)
    return samples, read_results(*result_files) if result_files else None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.compare", description=__doc__.splitlines()[0])
    ap.add_argument("samples", nargs="+", help="a sweep's results folder (results/<sweep>: its samples.parquet, "
                    "categories as its results table defines them), or per-sample record files/directories")
    ap.add_argument("--baseline", required=True, help='method compared against (e.g. "reap" or "baseline")')
    ap.add_argument("--method", required=True)
    ap.add_argument("--model")
    ap.add_argument("--ratio", type=float)
    ap.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--csv", type=Path, help="also write the table here")
    args = ap.parse_args(argv)
    try:
        samples, results = _read_inputs(args.samples)
        res = compare_samples(samples, args.baseline, args.method, args.model, args.ratio, args.resamples, args.seed,
                              results=results)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(res))
    print(f"\n95% paired bootstrap CI ({args.resamples} resamples, seed {args.seed}); "
          "* = interval excludes 0, values in percentage points")
    if args.csv:
        atomic_write_table(res, args.csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
