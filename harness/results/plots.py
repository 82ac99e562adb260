"""The paper's figures, drawn from results tables (``harness.results.table`` schema).

Why data-driven: a new compression method is the point of the harness, so any method name
gets a colour and a legend entry, and whether it counts as pruning or merging is a registry
entry, not code. Every figure function returns its matplotlib Figure so tests can inspect
what was drawn (lines carry a ``gid`` "source|model|method" or "baseline|source|model").

    python -m harness.plots RESULTS... --out plots/ [--overlay]
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from harness.results.table import read_results  # noqa: E402

# ---------------------------------------------------------------- registries (data)

# Colours handed out, in order, to methods that do not bring their own (Method.plot_colour); none repeats a
# method's own colour.
EXTRA_COLOURS: tuple[str, ...] = (
    "#AA3377", "#EE7733", "#009988", "#332288", "#882255", "#999933", "#CC3311", "#0077BB", "#44AA99",
    "#DDAA33",
)
DEFAULT_KIND = "pruning"  # an unregistered method name (e.g. a sweep's `label:`) is drawn as pruning
KIND_ORDER = ("pruning", "merging")
METHOD_ORDER = ("reap", "ean", "frequency", "hc_smoe", "m_smoe")
MODEL_MARKERS: dict[str, str] = {
    "ERNIE-4.5-21B-A3B": "o", "Qwen3-30B-A3B": "s", "Mixtral-8x7B-Instruct-v0.1": "v",
    "Llama-4-Scout-17B-16E-Instruct": "*", "GLM-4.5-Air": "p", "Qwen3-Coder-480B-A35B-Instruct-FP8": "D",
    "Kimi-K2-Instruct-W4A16": "X",
}
EXTRA_MARKERS: tuple[str, ...] = ("^", "<", ">", "h", "P", "d", "8", "H", "1", "2")
TASK_LABELS = {"coding": "Coding", "math": "Math", "creative_writing": "Creative\nWriting", "mc": "MC"}
BAR_TASKS = ("coding", "math", "creative_writing", "mc")
FIG1_PANELS = (("coding", "Non-Agentic Code Acc. (%)"), ("mc", "MC Accuracy (%)"))
BASELINE = "baseline"
PAPER_STYLE = dict(linestyle=":", markerfacecolor="none")  # overlay: the paper's points, hollow


def _method_class(method: str):
    """The registered method class of that name (its kind and plot style are class attributes), or None."""
    from harness.methods import METHODS

    if method not in METHODS:
        return None
    try:
        return METHODS.resolve(method)
    except (ImportError, TypeError):
        return None


def method_kind(method: str) -> str:
    cls = _method_class(method)
    return {"prune": "pruning", "merge": "merging"}[cls.kind] if cls is not None else DEFAULT_KIND


def method_label(method: str) -> str:
    if method == BASELINE:
        return "Baseline"
    cls = _method_class(method)
    return (cls.plot_label if cls is not None else None) or method


def method_palette() -> dict[str, str]:
    """The colours methods bring with them (Method.plot_colour)."""
    from harness.methods import METHODS

    found = {}
    for name in METHODS.names():
        cls = _method_class(name)
        if cls is not None and cls.plot_colour:
            found[name] = cls.plot_colour
    return found


def ordered_methods(methods: Iterable[str]) -> list[str]:
    """Known methods in the paper's order, then new ones alphabetically (stable colours)."""
    ms = {m for m in methods if m != BASELINE}
    known = [m for m in METHOD_ORDER if m in ms]
    return known + sorted(ms - set(known))


def method_colours(methods: Iterable[str]) -> dict[str, str]:
    """Palette colour for known methods, a distinct extra colour for each new one."""
    palette = method_palette()
    spare = iter(c for c in EXTRA_COLOURS if c not in palette.values())
    out = {}
    for m in ordered_methods(methods):
        if m in palette:
            out[m] = palette[m]
        else:
            out[m] = next(spare, None) or matplotlib.colors.to_hex(plt.cm.tab20(len(out) % 20))
    return out


def model_markers(models: Iterable[str]) -> dict[str, str]:
    spare = itertools.cycle(EXTRA_MARKERS)
    return {m: MODEL_MARKERS.get(m) or next(spare) for m in models}


def ordered_models(df: pd.DataFrame) -> list[str]:
    """Known models in the paper's legend order, then the rest by size."""
    ms = list(dict.fromkeys(df["model"]))
    known = [m for m in MODEL_MARKERS if m in ms]
    size = df.groupby("model")["total_params_b"].max()
    return known + sorted((m for m in ms if m not in known), key=lambda m: (size.get(m, np.inf), m))


def _mean_duplicates(df: pd.DataFrame) -> pd.DataFrame:
    """Several readings of one number (e.g. two figures of the paper) are averaged."""
    keys = ["source", "model", "method", "ratio", "task"]
    return df.groupby(keys, as_index=False, sort=False).agg(
        value=("value", "mean"), total_params_b=("total_params_b", "mean"),
        activated_params_b=("activated_params_b", "mean"), series=("series", "first"),
    )


def _sources(df: pd.DataFrame, overlay: bool) -> list[str]:
    present = [s for s in ("harness", "paper") if (df["source"] == s).any()]
    return present if overlay else present[:1]


def _header(text: str) -> tuple[Line2D, str]:
    return Line2D([], [], linestyle="none", marker=None), f"$\\bf{{{text.replace(' ', '~')}}}$"


def _method_legend(colours: dict[str, str], baseline: bool, patch: bool = True) -> tuple[list, list[str]]:
    handles, labels = [], []
    if baseline:
        handles.append(Patch(color="black") if patch else Line2D([], [], color="black", marker="s", ls="none"))
        labels.append("Baseline")
    for kind in KIND_ORDER:
        ms = [m for m in colours if method_kind(m) == kind]
        if not ms:
            continue
        h, lab = _header(f"{kind.capitalize()} methods")
        handles.append(h)
        labels.append(lab)
        for m in ms:
            handles.append(Patch(color=colours[m]))
            labels.append(method_label(m))
    other = [m for m in colours if method_kind(m) not in KIND_ORDER]
    for kind in sorted({method_kind(m) for m in other}):
        h, lab = _header(f"{kind.capitalize()} methods")
        handles.append(h)
        labels.append(lab)
        for m in (m for m in other if method_kind(m) == kind):
            handles.append(Patch(color=colours[m]))
            labels.append(method_label(m))
    return handles, labels


# ---------------------------------------------------------------- Figure 1


def figure1(df: pd.DataFrame, overlay: bool = False, join_baseline: bool = False,
            panels: Sequence[tuple[str, str]] = FIG1_PANELS) -> Figure:
    """Accuracy vs log total parameters: one panel per aggregate task (coding, MC).

    Black markers are baselines; a method's compressed points for one model are joined by a
    dashed line (the paper does not join the baseline; ``join_baseline`` does). With
    ``overlay`` the paper's points are drawn hollow with dotted lines beside the harness's.
    """
    data = df[df["task"].isin([t for t, _ in panels]) & df["total_params_b"].notna()]
    if data.empty:
        raise ValueError("figure1: no rows with task in "
                         f"{[t for t, _ in panels]} and a total_params_b")
    data = _mean_duplicates(data)
    colours = method_colours(data["method"])
    markers = model_markers(ordered_models(data))
    sources = _sources(data, overlay)
    fig, axes = plt.subplots(1, len(panels), figsize=(7.2 * len(panels) + 3.0, 5.2), squeeze=False)
    for ax, (task, ylabel) in zip(axes[0], panels, strict=True):
        sub = data[data["task"] == task]
        for source in sources:
            style = PAPER_STYLE if (overlay and source == "paper") else {"linestyle": "--"}
            s = sub[sub["source"] == source]
            for model, grp in s.groupby("model", sort=False):
                base = grp[grp["method"] == BASELINE]
                for b in base.itertuples():
                    ax.plot([b.total_params_b], [100 * b.value], marker=markers[model], ms=11, ls="none",
                            color="black", zorder=4, gid=f"baseline|{source}|{model}",
                            markerfacecolor="none" if style is PAPER_STYLE else "black")
                for method in ordered_methods(grp["method"]):
                    pts = grp[grp["method"] == method].sort_values("total_params_b")
                    if join_baseline and not base.empty:
                        pts = pd.concat([base.iloc[:1], pts]).sort_values("total_params_b")
                    ax.plot(pts["total_params_b"], 100 * pts["value"], marker=markers[model], ms=7, lw=2.0,
                            color=colours[method], zorder=3, gid=f"{source}|{model}|{method}", **style)
        ax.set_xscale("log")
        ax.set_xlabel("Log Scaled Total Parameters (in billions)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", ls="--", lw=0.6, color="#b2b2b2", alpha=0.8)
    handles, labels = _method_legend(colours, baseline=True)
    h, lab = _header("Models")
    handles.append(h)
    labels.append(lab)
    for model, mk in markers.items():
        handles.append(Line2D([], [], color="grey", marker=mk, ls="none", ms=8))
        labels.append(model)
    if overlay and len(sources) > 1:
        h, lab = _header("Source")
        handles += [h, Line2D([], [], color="grey", marker="o", ls="--"),
                    Line2D([], [], color="grey", marker="o", mfc="none", ls=":")]
        labels += [lab, "harness", "paper"]
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.80, 0.5), frameon=False, fontsize=9)
    fig.subplots_adjust(left=0.06, right=0.79, bottom=0.13, top=0.96, wspace=0.22)
    return fig


# ---------------------------------------------------------------- Figure 2


def figure2(df: pd.DataFrame, models: Sequence[str] | None = None, tasks: Sequence[str] = BAR_TASKS,
            overlay: bool = False) -> Figure:
    """Grouped bars per task and model: one bar per method; the lowest ratio solid and
    translucent behind, higher ratios hatched in front; the baseline a dashed grey line.

    With ``overlay`` the paper's values (when harness values are drawn) are black ticks.
    """
    data = _mean_duplicates(df[df["task"].isin(tasks)])
    if models is None:
        models = [m for m in ordered_models(data) if data.loc[data["model"] == m, "task"].nunique() >= 3]
    if not models:
        raise ValueError("figure2: no model has results for at least three of " + ", ".join(tasks))
    sources = _sources(data, overlay)
    main = sources[0]
    colours = method_colours(data.loc[data["model"].isin(models), "method"])
    methods = list(colours)
    ratios = sorted(r for r in data.loc[data["method"] != BASELINE, "ratio"].unique())
    hatches = {r: ("" if i == 0 else "//" if i == 1 else "xx" if i == 2 else "..") for i, r in enumerate(ratios)}
    width = 0.8 / max(len(methods), 1)
    fig, axes = plt.subplots(1, len(models), figsize=(6.2 * len(models) + 2.6, 4.8), sharey=True, squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        sub = data[(data["model"] == model) & (data["source"] == main)]
        present = [t for t in tasks if (sub["task"] == t).any()]
        for gi, task in enumerate(present):
            t = sub[sub["task"] == task]
            for mi, method in enumerate(methods):
                x = gi + (mi - (len(methods) - 1) / 2) * width
                bars = t[t["method"] == method].sort_values("value", ascending=False)  # tallest behind
                for b in bars.itertuples():
                    first = b.ratio == ratios[0]
                    ax.bar(x, 100 * b.value, width=width, color=colours[method], alpha=0.7 if first else 1.0,
                           hatch=hatches[b.ratio], edgecolor="#333333" if not first else colours[method],
                           linewidth=0.4, gid=f"{main}|{model}|{method}|{task}|{b.ratio:g}")
                if overlay and main != "paper":
                    ref = data[(data["model"] == model) & (data["source"] == "paper") & (data["task"] == task)
                               & (data["method"] == method)]
                    for r in ref.itertuples():
                        ax.plot([x - width / 2, x + width / 2], [100 * r.value] * 2, color="black", lw=1.5,
                                gid=f"paper|{model}|{method}|{task}|{r.ratio:g}")
            base = t[t["method"] == BASELINE]
            for b in base.itertuples():
                ax.plot([gi - 0.42, gi + 0.42], [100 * b.value] * 2, ls="--", lw=2.2, color="grey",
                        gid=f"baseline|{main}|{model}|{task}")
        ax.set_xticks(range(len(present)), [TASK_LABELS.get(t, t) for t in present])
        ax.set_xlabel(model, fontweight="bold")
        ax.set_ylim(0, 100)
    axes[0][0].set_ylabel("Mean Accuracy (%)")
    h, lab = _header("Compression Ratio")
    handles = [h, Line2D([], [], ls="--", color="grey", lw=2.2)]
    labels = [lab, "0%"]
    for r in ratios:
        handles.append(Patch(facecolor="grey", alpha=0.7 if r == ratios[0] else 1.0, hatch=hatches[r],
                             edgecolor="#333333"))
        labels.append(f"{100 * r:g}%")
    mh, ml = _method_legend(colours, baseline=False)
    fig.legend(handles + mh, labels + ml, loc="center left", bbox_to_anchor=(0.82, 0.5), frameon=False,
               fontsize=9)
    fig.subplots_adjust(left=0.06, right=0.81, bottom=0.2, top=0.96, wspace=0.05)
    return fig


# ---------------------------------------------------------------- Figure 3


def figure3(df: pd.DataFrame, log_x: bool = False, highlight: Sequence[str] = (), trend: str | None = None,
            ylabel: str | None = None) -> Figure:
    """Performance vs activated parameters: labelled points, dashed lines joining a series.

    ``highlight`` models get a star and dashed guide lines; ``trend="fit"`` adds a red dashed
    least-squares line through the other points (the "dense scaling" reference of seed 003).
    """
    data = df[df["activated_params_b"].notna()].copy()
    if data.empty:
        raise ValueError("figure3: no rows with activated_params_b")
    data["series"] = data["series"].where(data["series"] != "", data["model"])
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    series = list(dict.fromkeys(data["series"]))
    cmap = plt.get_cmap("tab10")
    colour = {s: cmap(i % 10) for i, s in enumerate(series)}
    for s in series:
        grp = data[data["series"] == s].sort_values("activated_params_b")
        hi = grp["model"].isin(highlight)
        if len(grp) > 1:
            ax.plot(grp["activated_params_b"], 100 * grp["value"], ls="--", lw=1.2, color=colour[s], gid=f"series|{s}")
        ax.plot(grp.loc[~hi, "activated_params_b"], 100 * grp.loc[~hi, "value"], ls="none", marker="o", ms=7,
                color=colour[s], gid=f"points|{s}")
        if hi.any():
            ax.plot(grp.loc[hi, "activated_params_b"], 100 * grp.loc[hi, "value"], ls="none", marker="*", ms=18,
                    color="red", gid=f"highlight|{s}")
        for r in grp.itertuples():
            ax.annotate(r.model, (r.activated_params_b, 100 * r.value), textcoords="offset points",
                        xytext=(5, 4), fontsize=8)
    hi_rows = data[data["model"].isin(highlight)]
    for r in hi_rows.itertuples():
        ax.axhline(100 * r.value, ls="--", color="lightgrey", lw=1, zorder=0)
        ax.axvline(r.activated_params_b, ls="--", color="lightgrey", lw=1, zorder=0)
    if trend == "fit":
        rest = data[~data["model"].isin(highlight)]
        xs = np.log10(rest["activated_params_b"]) if log_x else rest["activated_params_b"]
        slope, icpt = np.polyfit(xs, 100 * rest["value"], 1)
        lo, hi = rest["activated_params_b"].min() * 0.9, rest["activated_params_b"].max() * 1.05
        grid = np.linspace(lo, hi, 50)
        ax.plot(grid, slope * (np.log10(grid) if log_x else grid) + icpt, ls="--", color="red", lw=1.2,
                gid="trend")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("Activated Parameters (B)")
    metric = data["metric"].iloc[0] if "metric" in data else ""
    ax.set_ylabel(ylabel or f"{data['task'].iloc[0]} {metric} (%)")
    ax.grid(True, ls=":", alpha=0.5)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- large-scale table

TABLE_TASKS = ("evalplus", "livecodebench", "code_avg", "swe_bench_verified", "bfcl_non_live", "bfcl_live",
               "bfcl_multi_turn", "bfcl_overall", "mc_avg")


def table_frame(df: pd.DataFrame, tasks: Sequence[str] = TABLE_TASKS) -> pd.DataFrame:
    """Model x (ratio, method) rows, one column per task, values in percent."""
    sub = df[df["task"].isin(tasks)]
    if sub.empty:
        raise ValueError(f"table: no rows for tasks {list(tasks)}")
    sub = _mean_duplicates(sub)
    wide = sub.pivot_table(index=["model", "ratio", "method"], columns="task", values="value", aggfunc="mean")
    wide = wide[[t for t in tasks if t in wide.columns]] * 100
    order = {m: i for i, m in enumerate(ordered_methods(wide.index.get_level_values("method")))}
    return wide.sort_index(key=lambda idx: idx.map(lambda v: order.get(v, -1)) if idx.name == "method" else idx)


def table_markdown(df: pd.DataFrame, tasks: Sequence[str] = TABLE_TASKS) -> str:
    """The large-scale table as markdown (percent, one decimal; best compressed value bold)."""
    wide = table_frame(df, tasks)
    cols = list(wide.columns)
    lines = ["| Model | Compression | Method | " + " | ".join(cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for (model, ratio), grp in wide.groupby(level=["model", "ratio"], sort=False):
        best = grp.max() if ratio > 0 else None
        for (_, _, method), row in grp.iterrows():
            cells = []
            for c in cols:
                v = row[c]
                txt = "" if math.isnan(v) else f"{v:.1f}"
                if best is not None and not math.isnan(v) and v == best[c] and len(grp) > 1:
                    txt = f"**{txt}**"
                cells.append(txt)
            lines.append(f"| {model} | {100 * ratio:g}% | {method_label(method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_figure(df: pd.DataFrame, tasks: Sequence[str] = TABLE_TASKS) -> Figure:
    """The large-scale table rendered as an image."""
    wide = table_frame(df, tasks)
    cells = [[m, f"{100 * r:g}%", method_label(me), *[("" if math.isnan(v) else f"{v:.1f}") for v in row]]
             for (m, r, me), row in wide.iterrows()]
    cols = ["Model", "Compression", "Method", *wide.columns]
    fig, ax = plt.subplots(figsize=(2.0 + 1.05 * len(cols), 0.3 * (len(cells) + 2)))
    ax.axis("off")
    tab = ax.table(cellText=cells, colLabels=cols, loc="center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(8)
    tab.auto_set_column_width(list(range(len(cols))))
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- CLI


FAILURE_PREFIX = "failure_rate:"


def failure_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The failure-rate rows (harness.tasks.failures) of a results table, one per (model, variant, task, kind)."""
    rows = df[df["metric"].str.startswith(FAILURE_PREFIX) & (df["source"] == "harness")].copy()
    rows["kind"] = rows["metric"].str.removeprefix(FAILURE_PREFIX)
    return rows


def variant_label(method: str, ratio: float) -> str:
    return method_label(method) if method == BASELINE else f"{method_label(method)} {100 * ratio:g}%"


def figure_failures(df: pd.DataFrame, kinds: Sequence[str] | None = None) -> Figure:
    """How each variant's replies fail: per model, a heat map with one row per (method, ratio), the baseline
    first, and one column per (generative task, failure kind); cells are the fraction of the task's samples
    in %. Grey cells: the kind does not apply to that task or is unknown (e.g. no finish reasons recorded).

    Each model's image carries the gid "failures|<model>" and its data (rows x columns, in %) is the table's.
    """
    from harness.tasks.failures import ANY, kinds_in

    data = failure_frame(df)
    if data.empty:
        raise ValueError("figure_failures: no failure_rate:<kind> rows (no generative task ran?)")
    kinds = list(kinds) if kinds is not None else [k for k in kinds_in(data["metric"]) if k != ANY]
    models = ordered_models(data)
    grids = []
    for model in models:
        sub = data[(data["model"] == model) & data["kind"].isin(kinds)]
        present = set(zip(sub["method"], sub["ratio"], strict=True))
        order = [BASELINE] + ordered_methods(m for m, _ in present)
        variants = sorted(present, key=lambda v: (order.index(v[0]), v[1]))
        tasks = sorted(sub["task"].unique())
        columns = [(t, k) for t in tasks for k in kinds if ((sub["task"] == t) & (sub["kind"] == k)).any()]
        grid = np.full((len(variants), len(columns)), np.nan)
        for i, (method, ratio) in enumerate(variants):
            for j, (task, kind) in enumerate(columns):
                hit = sub[(sub["method"] == method) & np.isclose(sub["ratio"], ratio) & (sub["task"] == task)
                          & (sub["kind"] == kind)]
                if len(hit):
                    grid[i, j] = 100 * hit["value"].mean()
        grids.append((model, variants, columns, grid))
    width = max(6.0, 0.5 * max(len(g[2]) for g in grids) + 2.5)
    heights = [0.42 * len(g[1]) + 2.0 for g in grids]
    fig, axes = plt.subplots(len(grids), 1, figsize=(width, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    colours = method_colours(data["method"])
    cmap = plt.get_cmap("Reds").with_extremes(bad="#dddddd")
    for ax, (model, variants, columns, grid) in zip(axes[:, 0], grids, strict=True):
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=100, aspect="auto")
        image.set_gid(f"failures|{model}")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=9,
                            color="white" if grid[i, j] > 60 else "black")
        ax.set_yticks(range(len(variants)), [variant_label(m, r) for m, r in variants], fontsize=10)
        for tick, (method, _) in zip(ax.get_yticklabels(), variants, strict=True):
            tick.set_color(colours.get(method, "black"))
        ax.set_xticks(range(len(columns)), [k.replace("_", " ") for _, k in columns], rotation=60, ha="right",
                      fontsize=10)
        # Task names over their groups of columns, separated by white lines.
        start = 0
        for j in range(1, len(columns) + 1):
            if j == len(columns) or columns[j][0] != columns[start][0]:
                ax.text((start + j - 1) / 2, -0.7, columns[start][0], ha="center", va="bottom", fontsize=10,
                        fontweight="bold")
                if j < len(columns):
                    ax.axvline(j - 0.5, color="white", linewidth=3)
                start = j
        ax.set_title(f"{model}: failure kinds, % of samples", pad=20, fontsize=12)
    fig.colorbar(image, ax=axes[:, 0].tolist(), fraction=0.02, pad=0.01, label="% of samples")
    return fig


def save(fig: Figure, out: Path, name: str, formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        p = out / f"{name}.{fmt}"
        fig.savefig(p, dpi=dpi, bbox_inches="tight", metadata={"CreationDate": None} if fmt == "pdf" else None)
        paths.append(p)
    plt.close(fig)
    return paths


def render_all(df: pd.DataFrame, out: Path, overlay: bool = False, formats: Sequence[str] = ("png", "pdf"),
               highlight: Sequence[str] = ("DeepSeekMoE 16B",)) -> list[Path]:
    """Every figure the data supports; figures without data are skipped, not failed."""
    written: list[Path] = []
    compressed = df[df["total_params_b"].notna()]
    if compressed["task"].isin([t for t, _ in FIG1_PANELS]).any():
        written += save(figure1(compressed, overlay=overlay), out, "fig1_accuracy_vs_total_params", formats)
    try:
        written += save(figure2(df, overlay=overlay), out, "fig2_task_bars", formats)
    except ValueError:
        pass
    if df["metric"].str.startswith(FAILURE_PREFIX).any():
        written += save(figure_failures(df), out, "fig_failure_kinds", formats)
    act_only = df[df["total_params_b"].isna() & df["activated_params_b"].notna()]
    for (task, metric), grp in act_only.groupby(["task", "metric"]):
        hl = [h for h in highlight if (grp["model"] == h).any()]
        fig = figure3(grp, log_x=grp["activated_params_b"].max() / grp["activated_params_b"].min() > 8,
                      highlight=hl, trend="fit" if hl else None,
                      ylabel=f"{metric if task in metric else f'{task} {metric}'} (%)".replace("_", " "))
        written += save(fig, out, f"fig3_{task}_vs_activated_params", formats)
    if df["task"].isin(TABLE_TASKS).any():
        md = out / "table_large_scale.md"
        md.write_text(table_markdown(df))
        written.append(md)
        written += save(table_figure(df), out, "table_large_scale", formats)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m harness.plots", description="Draw the paper's figures.")
    ap.add_argument("results", nargs="+", help="results CSV/parquet files or directories of them")
    ap.add_argument("--out", type=Path, default=Path("plots"))
    ap.add_argument("--overlay", action="store_true", help="harness results beside the paper's")
    ap.add_argument("--formats", default="png,pdf")
    args = ap.parse_args(argv)
    df = read_results(*args.results)
    for p in render_all(df, args.out, overlay=args.overlay, formats=args.formats.split(",")):
        print(p)


if __name__ == "__main__":
    main()
