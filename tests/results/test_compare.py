"""Paired bootstrap: recovers a known difference, contains 0 for identical inputs, narrows with n."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harness.results import compare
from harness.results.table import write_samples


def synthetic(n: int, p_base: float, delta: float, tasks=("t1", "t2"), category="c", seed=1) -> pd.DataFrame:
    """Binary per-sample scores: the method flips samples so its accuracy is p_base + delta."""
    rng = np.random.default_rng(seed)
    rows = []
    for task in tasks:
        difficulty = rng.random(n)
        base = (difficulty < p_base).astype(float)
        new = (difficulty < p_base + delta).astype(float)
        for method, scores in (("reap", base), ("new", new)):
            rows += [dict(model="M", method=method, ratio=0.5, task=task, category=category,
                          sample_id=f"{task}-{i}", score=s) for i, s in enumerate(scores)]
    return pd.DataFrame(rows)


def test_known_difference_inside_interval():
    df = synthetic(400, 0.5, 0.08)
    res = compare.compare_samples(df, baseline="reap", method="new", n_resamples=4000)
    assert set(res["level"]) == {"task", "category"}
    for r in res.itertuples():
        assert r.ci_low <= 0.08 <= r.ci_high, r
        assert r.diff == pytest.approx(r.method - r.baseline)
        assert r.significant
    cat = res[res["level"] == "category"].iloc[0]
    tasks = res[res["level"] == "task"]
    assert cat["diff"] == pytest.approx(tasks["diff"].mean())
    assert cat["n"] == 800


def test_identical_inputs_contain_zero():
    df = synthetic(200, 0.6, 0.0)
    res = compare.compare_samples(df, baseline="reap", method="new", n_resamples=2000)
    assert (res["ci_low"] <= 0).all() and (res["ci_high"] >= 0).all()
    assert not res["significant"].any()
    noisy = df.copy()  # independent noise: not identical, but same distribution
    rng = np.random.default_rng(3)
    mask = noisy["method"] == "new"
    noisy.loc[mask, "score"] = (rng.random(mask.sum()) < 0.6).astype(float)
    res = compare.compare_samples(noisy, baseline="reap", method="new", n_resamples=2000)
    assert (res["ci_low"] <= 0.02).all()


def test_width_shrinks_with_more_samples():
    widths = []
    for n in (50, 200, 800):
        res = compare.compare_samples(synthetic(n, 0.5, 0.05, seed=n), "reap", "new", n_resamples=2000)
        cat = res[res["level"] == "category"].iloc[0]
        widths.append(cat["ci_high"] - cat["ci_low"])
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(4, rel=0.35)  # ~ 1/sqrt(n)


def test_category_interval_narrower_than_tasks_and_seeded():
    df = synthetic(300, 0.5, 0.03, tasks=("a", "b", "c", "d"))
    r1 = compare.compare_samples(df, "reap", "new", n_resamples=2000, seed=7)
    r2 = compare.compare_samples(df, "reap", "new", n_resamples=2000, seed=7)
    pd.testing.assert_frame_equal(r1, r2)
    w = r1["ci_high"] - r1["ci_low"]
    assert w[r1["level"] == "category"].iloc[0] < w[r1["level"] == "task"].min()


def test_pairs_by_sample_id_and_baseline_ratio():
    df = synthetic(100, 0.5, 0.1, tasks=("t",))
    shuffled = df.sample(frac=1.0, random_state=0)  # order must not matter
    base = df[df["method"] == "reap"].assign(method="baseline", ratio=0.0)
    both = pd.concat([shuffled, base])
    a = compare.compare_samples(both, "reap", "new", n_resamples=500)
    b = compare.compare_samples(both, "baseline", "new", n_resamples=500)
    assert a["diff"].iloc[0] == pytest.approx(0.1, abs=0.02) == b["diff"].iloc[0]
    with pytest.raises(ValueError, match="no samples"):
        compare.compare_samples(both, "reap", "new", model="other")


def test_cli(tmp_path, capsys):
    write_samples(synthetic(100, 0.5, 0.1), tmp_path / "s.csv")
    out = tmp_path / "cmp.csv"
    rc = compare.main([str(tmp_path / "s.csv"), "--baseline", "reap", "--method", "new", "--resamples", "500",
                       "--csv", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "category" in text and "95% CI" in text
    assert len(pd.read_csv(out)) == 3
    assert compare.main([str(tmp_path / "s.csv"), "--baseline", "reap", "--method", "nope"]) == 2


def test_compare_on_a_sweep_results_folder_scores_categories_as_its_table(zoo_dir, tmp_path, capsys):
    """The sweep's own collect step writes results/<sweep>; compare, pointed at that folder, gives the
    category differences of its table (category_tasks honoured, coding scored as the paper does)."""
    import yaml

    from harness.sweep.config import load_sweep
    from harness.sweep.grid import build_grid
    from harness.sweep.stages.collect import collect_results, write_outputs
    from harness.sweep.store import Store
    from harness.tasks import get_task_class
    from harness.tasks.base import SampleRecord, TaskResult
    from harness.tasks.runner import write_task_result as save_result
    from tests.conftest import DATASETS

    tasks = ["humaneval_plus", "mbpp_plus", "gsm8k", "math500", "arc_easy", "hellaswag"]
    body = {"name": "cmp", "models": [{"name": "tiny", "path": str(zoo_dir / "qwen3_moe")}],
            "calibration": {"datasets": [{"source": "org/data"}], "samples": 4, "length": 8},
            "methods": ["frequency"], "ratios": [0.5], "tasks": tasks, "data_dir": str(DATASETS),
            "work_dir": str(tmp_path / "work"), "results_dir": str(tmp_path / "results"), "plots": False,
            "category_tasks": {"coding": ["humaneval_plus"], "mc": ["arc_easy"]}}
    (tmp_path / "cmp.yaml").write_text(yaml.safe_dump(body))
    sweep = load_sweep(tmp_path / "cmp.yaml")
    cfg, grid = sweep.cfg, build_grid(sweep)
    store = Store(cfg.work_path)
    rng = np.random.default_rng(3)
    for variant in grid.models[0].variants:
        for name in tasks:
            scores = rng.integers(0, 2, 30).astype(float)
            result = TaskResult(task=name, category=get_task_class(name).category, score=float(scores.mean()),
                                metrics={"accuracy": float(scores.mean())}, n_samples=len(scores),
                                samples=[SampleRecord(sample_id=str(i), prompt="p", output="o", score=s)
                                         for i, s in enumerate(scores)])
            key = variant.eval_keys[name]
            save_result(result, store.dir("eval", key))
            store.mark_done("eval", key)
    write_outputs(cfg, *collect_results(cfg, store, grid))
    table = pd.read_parquet(tmp_path / "results" / "results.parquet")
    assert (tmp_path / "results" / "report.html").is_file()  # the sweep's report (harness.results.report)

    assert compare.main([str(tmp_path / "results"), "--baseline", "baseline", "--method", "frequency",
                         "--resamples", "200", "--csv", str(tmp_path / "cmp.csv")]) == 0
    res = pd.read_csv(tmp_path / "cmp.csv")
    cats = table[table["task"] == table["category"]]
    for row in res[res["level"] == "category"].itertuples():
        value = {m: cats[(cats["method"] == m) & (cats["task"] == row.name)]["value"].item()
                 for m in ("baseline", "frequency")}
        assert row.diff == pytest.approx(value["frequency"] - value["baseline"], abs=1e-6), row.name  # CSV digits
        assert row.baseline == pytest.approx(value["baseline"], abs=1e-6)
    assert set(res[res["level"] == "category"]["name"]) == {"coding", "math", "mc"}
