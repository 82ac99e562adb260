"""Figures: what is drawn equals the data (inspected through matplotlib objects)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest

from harness.methods.base import Method
from harness.results import plots
from harness.results.table import read_results, rows_to_frame

REPO = Path(__file__).resolve().parents[2]
PAPER = REPO / "results" / "paper"
BARS_REF = REPO.parent / "shared" / "reference" / "paper_task_bars.csv"

# Figure 1 anchors, checked independently of the digitiser: the MC panel plots numbers that
# the exact large-scale table also gives (Qwen3-Coder, Kimi-K2), and the GLM/Qwen3 points
# are the same numbers as the task bars (read separately, +-0.5 pt). Tolerance: 0.5 pt for
# bar-chart anchors, 0.3 pt for exact-table anchors (the digitiser agrees with the exact
# table within 0.05 pt on all 14 MC points of those two models).
ANCHORS = [  # panel, model, method, ratio, value (%), tolerance (pt)
    ("mc", "Kimi-K2-Instruct-W4A16", "baseline", 0.0, 78.0, 0.3),
    ("mc", "Kimi-K2-Instruct-W4A16", "reap", 0.25, 77.3, 0.3),
    ("mc", "Kimi-K2-Instruct-W4A16", "frequency", 0.5, 43.9, 0.3),
    ("mc", "Qwen3-Coder-480B-A35B-Instruct-FP8", "baseline", 0.0, 75.0, 0.3),
    ("mc", "Qwen3-Coder-480B-A35B-Instruct-FP8", "reap", 0.5, 69.2, 0.3),
    ("mc", "Qwen3-Coder-480B-A35B-Instruct-FP8", "ean", 0.5, 59.1, 0.3),
    ("coding", "GLM-4.5-Air", "baseline", 0.0, 58.0, 0.5),
    ("coding", "GLM-4.5-Air", "frequency", 0.5, 30.6, 0.5),
    ("coding", "Qwen3-30B-A3B", "hc_smoe", 0.5, 36.2, 0.5),
    ("mc", "GLM-4.5-Air", "hc_smoe", 0.25, 70.5, 0.5),
    ("mc", "Qwen3-30B-A3B", "m_smoe", 0.5, 44.9, 0.5),
]
# Coding points of the two big models: the figure's "non-agentic code" sits 2-3 pt below the
# table's code_avg, so those anchors are hand readings of zoomed crops instead (+-0.5 pt).
HAND_ANCHORS = [
    ("coding", "Qwen3-Coder-480B-A35B-Instruct-FP8", "frequency", 0.5, 1.0, 0.5),
    ("coding", "Kimi-K2-Instruct-W4A16", "reap", 0.25, 64.0, 0.5),
    ("coding", "ERNIE-4.5-21B-A3B", "m_smoe", 0.5, 8.9, 0.5),
    ("coding", "Mixtral-8x7B-Instruct-v0.1", "baseline", 0.0, 29.6, 0.5),
]


@pytest.fixture(scope="module")
def fig1_data() -> pd.DataFrame:
    return read_results(PAPER / "fig1_accuracy_vs_total_params.csv")


@pytest.fixture(scope="module")
def fig1(fig1_data):
    fig = plots.figure1(fig1_data)
    yield fig
    plots.plt.close(fig)


def lines_by_gid(ax) -> dict[str, object]:
    return {ln.get_gid(): ln for ln in ax.get_lines() if ln.get_gid()}


def legend_texts(fig) -> list[str]:
    return [t.get_text() for t in fig.legends[0].get_texts()]


def test_fig1_structure(fig1, fig1_data):
    axes = fig1.axes
    assert len(axes) == 2
    for ax, (task, _) in zip(axes, plots.FIG1_PANELS, strict=True):
        assert ax.get_xscale() == "log"
        sub = fig1_data[fig1_data["task"] == task]
        lines = lines_by_gid(ax)
        series = {k: v for k, v in lines.items() if not k.startswith("baseline|")}
        expected = sub[sub["method"] != "baseline"].groupby(["model", "method"]).size()
        assert len(series) == len(expected) == 31
        for (model, method), n in expected.items():
            ln = series[f"paper|{model}|{method}"]
            assert len(ln.get_xdata()) == n == 2
            assert ln.get_linestyle() == "--"
            assert mcolors.to_hex(ln.get_color()) == plots.method_palette()[method].lower()
        base = [k for k in lines if k.startswith("baseline|")]
        assert len(base) == 7
        assert all(mcolors.to_hex(lines[k].get_color()) == "#000000" for k in base)
    texts = legend_texts(fig1)
    for model in plots.MODEL_MARKERS:
        assert model in texts
    for label in ("REAP (ours)", "EAN", "Frequency", "HC-SMoE", "M-SMoE", "Baseline"):
        assert label in texts
    heads = [t for t in texts if t.startswith("$\\bf")]
    assert len(heads) == 3  # pruning, merging, models
    assert texts.index("HC-SMoE") > texts.index(heads[1]) > texts.index("Frequency")


def test_fig1_points_equal_data(fig1, fig1_data):
    for ax, (task, _) in zip(fig1.axes, plots.FIG1_PANELS, strict=True):
        lines = lines_by_gid(ax)
        for r in fig1_data[fig1_data["task"] == task].itertuples():
            gid = f"baseline|paper|{r.model}" if r.method == "baseline" else f"paper|{r.model}|{r.method}"
            xs, ys = lines[gid].get_xdata(), lines[gid].get_ydata()
            hit = np.isclose(xs, r.total_params_b) & np.isclose(ys, 100 * r.value)
            assert hit.any(), (task, r.model, r.method, r.ratio)


@pytest.mark.parametrize("panel,model,method,ratio,value,tol", ANCHORS + HAND_ANCHORS)
def test_fig1_matches_anchor_points(fig1, panel, model, method, ratio, value, tol):
    ax = fig1.axes[[t for t, _ in plots.FIG1_PANELS].index(panel)]
    lines = lines_by_gid(ax)
    gid = f"baseline|paper|{model}" if method == "baseline" else f"paper|{model}|{method}"
    ys = np.asarray(lines[gid].get_ydata())
    y = ys.max() if method == "baseline" else ys[0 if ratio == 0.5 else -1]  # sorted by total params
    assert abs(y - value) <= tol, f"{model} {method} {ratio}: plotted {y:.2f}, anchor {value}"


def test_fig1_join_baseline_adds_the_start_point(fig1_data):
    fig = plots.figure1(fig1_data, join_baseline=True)
    ln = lines_by_gid(fig.axes[0])["paper|GLM-4.5-Air|reap"]
    assert len(ln.get_xdata()) == 3 and max(ln.get_xdata()) == pytest.approx(106.9)
    plots.plt.close(fig)


def test_fig2_bars_equal_reference():
    ref = pd.read_csv(BARS_REF)
    df = read_results(PAPER / "task_bars_glm_qwen.csv")
    fig = plots.figure2(df)
    bars = {p.get_gid(): p for ax in fig.axes for p in ax.patches if p.get_gid()}
    base = {ln.get_gid(): ln for ax in fig.axes for ln in ax.get_lines() if (ln.get_gid() or "").startswith("base")}
    assert len(fig.axes) == 2
    n_bars = 0
    for r in ref.itertuples():
        if r.method == "baseline":
            ln = base[f"baseline|paper|{r.model}|{r.task}"]
            assert ln.get_linestyle() == "--" and np.allclose(ln.get_ydata(), r.accuracy_pct)
            continue
        p = bars[f"paper|{r.model}|{r.method}|{r.task}|{r.compression:g}"]
        n_bars += 1
        assert p.get_height() == pytest.approx(r.accuracy_pct)
        assert (p.get_hatch() or "") == ("//" if r.compression == 0.5 else "")
    assert n_bars == len(bars) == (ref["method"] != "baseline").sum()
    assert len(base) == 8
    plots.plt.close(fig)


class MyMerge(Method):  # a new merging method's class, as a new method module would define it
    name = "my_new_method"
    kind = "merge"

    def plan_layers(self, stats, kept, constraints):
        raise NotImplementedError


def test_unknown_method_gets_colour_and_legend(fig1_data, monkeypatch):
    new = fig1_data[(fig1_data["method"] == "reap")].assign(method="my_new_method", value=lambda d: d["value"] * 0.9)
    df = pd.concat([fig1_data, new], ignore_index=True)
    fig = plots.figure1(df)
    ln = lines_by_gid(fig.axes[0])["paper|GLM-4.5-Air|my_new_method"]
    colour = mcolors.to_hex(ln.get_color())
    assert colour not in {c.lower() for c in plots.method_palette().values()}
    texts = legend_texts(fig)
    assert "my_new_method" in texts
    pruning_head = [t for t in texts if "Pruning" in t][0]
    merging_head = [t for t in texts if "Merging" in t][0]
    assert texts.index(pruning_head) < texts.index("my_new_method") < texts.index(merging_head)
    plots.plt.close(fig)
    # Registered as a merging method (its class says so), it joins the merging group: no plot table to edit.
    from harness import methods

    entries = methods.METHODS.entries
    monkeypatch.setattr(methods.METHODS, "entries", lambda: {**entries(), "my_new_method": f"{__name__}:MyMerge"})
    texts = legend_texts(plots.figure1(df))
    assert texts.index("my_new_method") > texts.index(merging_head)
    bars = plots.figure2(pd.concat([read_results(PAPER / "task_bars_glm_qwen.csv"),
                                    new.assign(task="math", category="math")]), models=["GLM-4.5-Air"])
    assert "my_new_method" in legend_texts(bars)


def test_two_new_methods_get_different_colours():
    cols = plots.method_colours(["reap", "zeta", "alpha", "baseline"])
    assert set(cols) == {"reap", "zeta", "alpha"} and len(set(cols.values())) == 3


def test_overlay_draws_both_sources(fig1_data):
    mine = rows_to_frame([
        dict(model="GLM-4.5-Air", method=m, ratio=r, task="coding", category="coding", metric="accuracy",
             value=v, total_params_b=t, source="harness")
        for m, r, v, t in [("baseline", 0.0, 0.57, 106.9), ("reap", 0.25, 0.56, 82.0), ("reap", 0.5, 0.5, 57.0)]
    ])
    df = pd.concat([fig1_data, mine], ignore_index=True)
    fig = plots.figure1(df, overlay=True)
    lines = lines_by_gid(fig.axes[0])
    assert lines["harness|GLM-4.5-Air|reap"].get_linestyle() == "--"
    paper = lines["paper|GLM-4.5-Air|reap"]
    assert paper.get_linestyle() == ":" and paper.get_markerfacecolor() == "none"
    assert "baseline|harness|GLM-4.5-Air" in lines
    plots.plt.close(fig)
    without = plots.figure1(df)  # no overlay: one source only (the harness's)
    assert not any(k.startswith("paper|") for k in lines_by_gid(without.axes[0]))
    plots.plt.close(without)


def test_fig3_and_table():
    d3 = read_results(PAPER / "seed003_deepseekmoe_vs_activated.csv")
    fig = plots.figure3(d3, highlight=["DeepSeekMoE 16B"], trend="fit")
    ax = fig.axes[0]
    lines = lines_by_gid(ax)
    n_points = sum(len(v.get_xdata()) for k, v in lines.items() if k.startswith(("points|", "highlight|")))
    assert n_points == len(d3) and "trend" in lines
    assert len([t for t in ax.texts]) == len(d3)
    plots.plt.close(fig)
    d4 = read_results(PAPER / "seed004_kimivl_mathvision_vs_activated.csv")
    fig = plots.figure3(d4, log_x=True)
    lines = lines_by_gid(fig.axes[0])
    assert {"series|Kimi", "series|Gemma", "series|Qwen", "series|QVQ"} <= set(lines)
    assert fig.axes[0].get_xscale() == "log"
    plots.plt.close(fig)
    md = plots.table_markdown(read_results(PAPER / "large_scale_table.csv"))
    assert md.count("\n") == 2 + 14 and "| Kimi-K2-Instruct-W4A16 | 50% | REAP (ours) | **86.3** |" in md


def test_cli_writes_every_figure(tmp_path):
    plots.main([str(PAPER), "--out", str(tmp_path), "--formats", "png"])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert {"fig1_accuracy_vs_total_params.png", "fig2_task_bars.png", "table_large_scale.md"} <= set(names)
    assert sum(n.startswith("fig3_") for n in names) == 2
