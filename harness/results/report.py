"""`python -m harness.report results/<sweep>`: one self-contained HTML page of a sweep's results.

Why one file: a sweep's results are read on laptops, attached to issues and archived; a page that needs
a server, a CDN or the work directory stops working the day it is moved. Everything is inside it: the
figures as PNG data URIs, the tables, the failure kinds (harness.tasks.failures), the paired comparisons of
every variant with the baseline (harness.results.compare), and every sample of every variant beside the
baseline's (prompt, reply, extracted answer, verdict), filterable by task, verdict and failure kind with
a few lines of inline JavaScript. No external script, style sheet, font or image: the page makes no
request at all.

It reads only the sweep's results folder (``results.parquet``, ``samples.parquet``), and says where each
number came from: the files' sha256, the harness version, and per task and variant the evaluation and
checkpoint keys of the store and the task's recorded provenance (generation settings, data checksums,
tool versions, chat-template hash). The sweep writes it at the end of every run (``report.html``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

import harness
from harness.results.table import read_results, read_samples
from harness.tasks.failures import ANY, KINDS, METRIC_PREFIX, kinds_in
from harness.util.atomic import atomic_write

REPORT_NAME = "report.html"
DEFAULT_RESAMPLES = 2000  # paired bootstrap rounds per comparison: enough for a 95 % interval in a report
DEFAULT_MAX_CHARS = 20_000  # per text cell; longer prompts / replies are cut and say by how much
BASELINE = "baseline"
# Figures in the order they are shown; the accuracy and failure figures side by side.
FIGURE_ORDER = ("fig2_task_bars", "fig_failure_kinds", "fig1_accuracy_vs_total_params")


# -- data -------------------------------------------------------------------------------------------------
def variant_id(method: str, ratio: float) -> str:
    return BASELINE if method == BASELINE else f"{method}@{ratio:g}"


def variant_label(method: str, ratio: float) -> str:
    return BASELINE if method == BASELINE else f"{method} {100 * ratio:g}%"


def _variants(frame: pd.DataFrame) -> list[tuple[str, float]]:
    """(method, ratio) pairs, the baseline first, then methods in the plots' order, ratios ascending."""
    from harness.results.plots import ordered_methods

    present = set(zip(frame["method"], frame["ratio"].astype(float), strict=True))
    order = [BASELINE] + ordered_methods(m for m, _ in present)
    return sorted(present, key=lambda v: (order.index(v[0]), v[1]))


def _clip(text: object, limit: int) -> str | None:
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return None
    text = str(text)
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} more characters not shown in the report]"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verdict(score: float) -> str:
    return "correct" if score >= 1.0 else "wrong" if score <= 0.0 else "partial"


def sample_data(samples: pd.DataFrame, max_chars: int = DEFAULT_MAX_CHARS) -> dict:
    """The samples as the page's script reads them: prompts and targets once per (task, sample), replies per
    variant. Keys are short because a sweep has thousands of samples per variant."""
    prompts: dict[str, dict[str, str | None]] = {}
    targets: dict[str, dict[str, str | None]] = {}
    rows = []
    has = set(samples.columns)
    for r in samples.itertuples(index=False):
        prompts.setdefault(r.task, {}).setdefault(r.sample_id, _clip(getattr(r, "prompt", None), max_chars))
        targets.setdefault(r.task, {}).setdefault(r.sample_id, _clip(getattr(r, "target", None), max_chars))
        rows.append({
            "m": r.model, "v": variant_id(r.method, r.ratio), "t": r.task, "id": r.sample_id,
            "s": float(r.score), "verdict": _verdict(float(r.score)),
            "o": _clip(r.output, max_chars) if "output" in has else None,
            "x": _clip(r.extracted, max_chars) if "extracted" in has else None,
            "fr": (r.finish_reason if isinstance(r.finish_reason, str) else None) if "finish_reason" in has else None,
            "f": [k for k in str(r.failures).split(",") if k] if "failures" in has and isinstance(r.failures, str)
            else [],
        })
    # Tables written before replies were recorded (harness < failure kinds) have scores only.
    return {"prompts": prompts, "targets": targets, "samples": rows, "has_text": "output" in has}


def _script_json(value: object) -> str:
    """JSON safe inside a <script> element: no "<" at all, so no "</script>" or "<!--" can end it early."""
    return json.dumps(value, ensure_ascii=False, default=str).replace("<", "\\u003c")


# -- tables ------------------------------------------------------------------------------------------------
def _table(frame: pd.DataFrame, *, cls: str = "", percent: Sequence[str] = (), signed: Sequence[str] = ()) -> str:
    """A DataFrame as an HTML table; columns in `percent` shown in % (one decimal), `signed` with a sign."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for col, value in zip(frame.columns, row, strict=True):
            if isinstance(value, float) and np.isnan(value):
                text = ""
            elif col in percent or col in signed:
                text = f"{100 * value:+.1f}" if col in signed else f"{100 * value:.1f}"
            elif isinstance(value, float):
                text = f"{value:.4g}"
            else:
                text = str(value)
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
            '</table></div>')


def _pivot(rows: pd.DataFrame, columns: str | list[str]) -> pd.DataFrame:
    """Variants as rows (baseline first), `columns` as columns, values in %."""
    rows = rows.copy()
    rows["variant"] = [variant_label(m, r) for m, r in zip(rows["method"], rows["ratio"], strict=True)]
    order = {variant_label(m, r): i for i, (m, r) in enumerate(_variants(rows))}
    table = rows.pivot_table(index=["model", "variant"], columns=columns, values="value", aggfunc="mean")
    table = table.reindex(sorted(table.index, key=lambda k: (k[0], order[k[1]])))
    if isinstance(table.columns, pd.MultiIndex):
        table.columns = [" ".join(str(p) for p in c).replace("_", " ") for c in table.columns]
    return table.reset_index()


def score_tables(results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(category scores, task scores) with variants as rows."""
    ours = results[results["source"] == "harness"]
    categories = ours[ours["task"] == ours["category"]]
    tasks = ours[(ours["task"] != ours["category"]) & (ours["metric"] == "score")]
    return _pivot(categories, "task"), _pivot(tasks, "task")


def failure_table(results: pd.DataFrame) -> pd.DataFrame:
    """Failure rates: variants as rows, (task, kind) as columns."""
    rows = results[(results["source"] == "harness") & results["metric"].str.startswith(METRIC_PREFIX)].copy()
    if rows.empty:
        return pd.DataFrame()
    rows["kind"] = rows["metric"].str.removeprefix(METRIC_PREFIX)
    kinds = kinds_in(rows["metric"])
    table = _pivot(rows, ["task", "kind"])
    keep = ["model", "variant"] + [c for t in sorted(rows["task"].unique()) for k in kinds
                                   if (c := f"{t} {k}".replace("_", " ")) in table.columns]
    return table[keep]


def comparisons(samples: pd.DataFrame, results: pd.DataFrame, resamples: int) -> tuple[pd.DataFrame, list[str]]:
    """Every compressed variant against the baseline (harness.results.compare), and why any could not be compared."""
    from harness.results.compare import compare_samples

    frames, problems = [], []
    if not (samples["method"] == BASELINE).any():
        return pd.DataFrame(), ["no baseline samples: nothing to compare against"]
    for method in dict.fromkeys(m for m, _ in _variants(samples) if m != BASELINE):
        try:
            frames.append(compare_samples(samples, BASELINE, method, n_resamples=resamples, results=results))
        except ValueError as exc:
            problems.append(f"{method}: {exc}")
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), problems


def provenance_rows(results: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Per (model, variant, task): the store keys; per task: its recorded provenance (the baseline's when
    there is one), shown once since the variants share it apart from the served model."""
    ours = results[(results["source"] == "harness") & (results["metric"] == "score")]
    rows, per_task = [], {}
    for r in ours.sort_values(["model", "method", "ratio", "task"]).itertuples():
        prov = json.loads(r.provenance or "{}")
        rows.append({"model": r.model, "variant": variant_label(r.method, r.ratio), "task": r.task,
                     "n": int(r.n_samples) if np.isfinite(r.n_samples) else None,
                     "eval key": prov.get("eval_key", ""), "checkpoint key": prov.get("checkpoint_key") or "",
                     "harness": r.harness_version})
        if r.task not in per_task or r.method == BASELINE:
            per_task[r.task] = prov.get("provenance", prov)
    return pd.DataFrame(rows), per_task


# -- figures -----------------------------------------------------------------------------------------------
def figure_images(results: pd.DataFrame) -> list[tuple[str, str, float]]:
    """(name, PNG data URI, width / height) of every figure the table supports (harness.results.plots.render_all),
    in FIGURE_ORDER."""
    import struct

    from harness.results.plots import render_all

    found = {}
    with tempfile.TemporaryDirectory(prefix="harness-report-") as tmp:
        for path in sorted(p for p in render_all(results, Path(tmp), formats=("png",)) if p.suffix == ".png"):
            png = path.read_bytes()
            width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
            found[path.stem] = ("data:image/png;base64," + base64.b64encode(png).decode(), width / height)
    order = [n for n in FIGURE_ORDER if n in found] + sorted(n for n in found if n not in FIGURE_ORDER)
    return [(n, *found[n]) for n in order]


CAPTIONS = {
    "fig1_accuracy_vs_total_params": "Accuracy against total parameters (coding and multiple choice).",
    "fig2_task_bars": "Accuracy per category: 25 % solid, 50 % hatched, baseline dashed.",
    "fig_failure_kinds": "How replies fail, per method and ratio: % of each generative task's samples per "
                         "failure kind (grey: not applicable or unknown).",
}

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222;max-width:1800px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}
th,td{border:1px solid #ddd;padding:3px 6px;vertical-align:top;text-align:left}
th{background:#f3f3f3;position:sticky;top:0}
.scroll{overflow-x:auto;max-width:100%}.figures{margin-bottom:1em;display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
figure{margin:0;min-width:320px}figure img{width:100%;border:1px solid #eee;cursor:zoom-in}
figure img.full{width:auto;max-width:none;cursor:zoom-out}figure:has(img.full){flex-basis:100%!important;overflow:auto}
figcaption{font-size:12px;color:#555}
.controls{display:flex;flex-wrap:wrap;gap:1em;align-items:center;margin:.5em 0;position:sticky;top:0;
background:#fff;padding:.4em 0;z-index:2}
#samples{table-layout:fixed;width:100%}#samples td:first-child{word-break:break-all}
#samples td pre{white-space:pre-wrap;word-break:break-word;margin:0;max-height:24em;overflow:auto;font-size:11px}
.correct{background:#e6f4e6}.wrong{background:#fbe9e9}.partial{background:#fff6dd}
.kind{display:inline-block;background:#eee;border-radius:3px;padding:0 4px;margin:1px;font-size:11px}
.muted{color:#777;font-size:12px}details{margin:.3em 0}
"""

SCRIPT = """
(function () {
  const data = JSON.parse(document.getElementById('report-data').textContent);
  const $ = (id) => document.getElementById(id);
  const key = (s) => s.m + '\\u0000' + s.t + '\\u0000' + s.id;
  const baseline = new Map();
  for (const s of data.samples) if (s.v === 'baseline') baseline.set(key(s), s);
  function option(select, value, text) {
    const o = document.createElement('option'); o.value = value; o.textContent = text; select.appendChild(o);
  }
  function fill(select, values, labels) {
    const keep = select.value; select.textContent = '';
    values.forEach((v, i) => option(select, v, labels ? labels[i] : v));
    if (values.includes(keep)) select.value = keep;
  }
  const models = [...new Set(data.samples.map((s) => s.m))];
  fill($('f-model'), models);
  let first = true;
  function refreshChoices() {
    const ofModel = data.samples.filter((s) => s.m === $('f-model').value);
    const variants = data.variants.filter((v) => ofModel.some((s) => s.v === v.id));
    fill($('f-variant'), variants.map((v) => v.id), variants.map((v) => v.label));
    if (first && variants.length > 1) $('f-variant').value = variants[1].id;  // a compressed variant first
    first = false;
    fill($('f-task'), [...new Set(ofModel.map((s) => s.t))].sort());
  }
  function cell(tr, text, cls) {
    const td = document.createElement('td');
    if (cls) td.className = cls;
    if (text !== null && text !== undefined) {
      const pre = document.createElement('pre'); pre.textContent = String(text); td.appendChild(pre);
    }
    tr.appendChild(td); return td;
  }
  function side(tr, s) {
    if (!s) { cell(tr, '(no sample)'); cell(tr, null); cell(tr, null); return; }
    const none = data.has_text ? '(no reply: scored by log-likelihood)' : '(replies not in samples.parquet)';
    cell(tr, s.o === null ? none : s.o, s.verdict);
    cell(tr, s.x, s.verdict);
    const td = cell(tr, s.verdict + ' (' + s.s + ')' + (s.fr ? '\\nfinish: ' + s.fr : ''), s.verdict);
    for (const k of s.f) {
      const span = document.createElement('span'); span.className = 'kind'; span.textContent = k;
      td.appendChild(span);
    }
  }
  function render() {
    const m = $('f-model').value, v = $('f-variant').value, t = $('f-task').value;
    const verdict = $('f-verdict').value, kind = $('f-kind').value, changed = $('f-changed').checked;
    const of = data.samples.filter((s) => s.m === m && s.v === v && s.t === t);
    const shown = of.filter((s) => {
      if (verdict !== 'all' && s.verdict !== verdict) return false;
      if (kind === 'any' && s.f.length === 0) return false;
      if (kind === 'none' && s.f.length > 0) return false;
      if (kind !== 'all' && kind !== 'any' && kind !== 'none' && !s.f.includes(kind)) return false;
      if (changed) { const b = baseline.get(key(s)); if (b && b.s === s.s) return false; }
      return true;
    });
    shown.sort((a, b) => a.id.localeCompare(b.id, undefined, {numeric: true}));
    const tbody = $('samples').tBodies[0]; tbody.textContent = '';
    for (const s of shown) {
      const tr = document.createElement('tr'); tr.className = 'sample-row'; tr.dataset.id = s.id;
      cell(tr, s.id);
      const prompt = (data.prompts[s.t] || {})[s.id], target = (data.targets[s.t] || {})[s.id];
      cell(tr, prompt + (target !== null && target !== undefined ? '\\n\\n[target] ' + target : ''));
      side(tr, baseline.get(key(s)));
      side(tr, s);
      tbody.appendChild(tr);
    }
    $('f-count').textContent = shown.length + ' of ' + of.length + ' samples shown';
    $('samples').dataset.shown = String(shown.length);
    $('variant-head').textContent = (data.variants.find((x) => x.id === v) || {label: v}).label;
  }
  $('f-model').addEventListener('change', () => { refreshChoices(); render(); });
  for (const id of ['f-variant', 'f-task', 'f-verdict', 'f-kind', 'f-changed']) {
    $(id).addEventListener('change', render);
  }
  for (const img of document.images) img.addEventListener('click', () => img.classList.toggle('full'));
  refreshChoices(); render();
  window.harnessReport = {render: render, data: data};
})();
"""


def build_html(results_dir: Path, *, resamples: int = DEFAULT_RESAMPLES, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """The report page of a sweep's results folder."""
    results_dir = Path(results_dir)
    files = {name: results_dir / name for name in ("results.parquet", "samples.parquet")}
    for name, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: point harness.results.report at a sweep's results folder "
                                    f"(results/<sweep>, written by `python -m harness.sweep`), which has {name}")
    results = read_results(files["results.parquet"])
    samples = read_samples(files["samples.parquet"])
    esc = html.escape
    name = results_dir.resolve().name
    categories, tasks = score_tables(results)
    failures = failure_table(results)
    compared, compare_problems = comparisons(samples, results, resamples)
    keys, per_task = provenance_rows(results)
    figures = figure_images(results)
    variants = [{"id": variant_id(m, r), "label": variant_label(m, r)} for m, r in _variants(samples)]
    data = {**sample_data(samples, max_chars), "variants": variants}
    kinds = [k for k in KINDS if samples.get(f"failure_{k}", pd.Series(dtype=object)).fillna(False).astype(bool).any()]
    kinds = kinds or [k for k in kinds_in(results["metric"]) if k != ANY]

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Sweep report: {esc(name)}</title>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>Sweep report: {esc(name)}</h1>",
             f"<p class='muted'>{results['model'].nunique()} model(s), {len(_variants(results))} variant(s), "
             f"{samples['task'].nunique()} task(s), {len(samples)} samples. Written by harness "
             f"{esc(harness.__version__)} from <code>{esc(str(results_dir))}</code>: "
             + ", ".join(f"{esc(n)} sha256 <code>{_sha256(p)[:16]}</code>" for n, p in files.items()) + ".</p>",
             "<h2 id='figures'>Figures</h2><div class='figures'>"]
    for index, (fig_name, uri, aspect) in enumerate(figures):
        if index and fig_name not in FIGURE_ORDER[:2]:  # accuracy and failure kinds side by side, the rest below
            parts.append("</div><div class='figures'>")
        # flex-grow in proportion to width/height: figures sharing a row get the same height
        parts.append(f"<figure style='flex:{aspect:.3f} 1 0'><img src='{uri}' alt='{esc(fig_name)}' "
                     f"data-figure='{esc(fig_name)}' title='click to enlarge'>"
                     f"<figcaption>{esc(CAPTIONS.get(fig_name, fig_name))}</figcaption></figure>")
    parts.append("</div>")
    def values(frame: pd.DataFrame) -> list[str]:
        return [c for c in frame.columns if c not in ("model", "variant")]

    parts += ["<h2 id='scores'>Scores (%)</h2><p class='muted'>Category scores as the paper defines them "
              "(harness.tasks.categories), then each task's score.</p>",
              _table(categories, cls="scores", percent=values(categories)),
              _table(tasks, cls="task-scores", percent=values(tasks))]
    parts.append("<h2 id='failures'>Failure kinds (% of samples)</h2><p class='muted'>Per generative task "
                 "(harness.tasks.failures): empty reply; truncated at max_tokens; degenerate (the reply ends in a "
                 "repeated loop); no extractable answer (math); no code, a syntax error or no entry point (coding); "
                 "any = at least one. Kinds are not exclusive.</p>")
    parts.append(_table(failures, cls="failures", percent=values(failures))
                 if not failures.empty else "<p>No generative task in this sweep.</p>")
    parts.append(f"<h2 id='comparisons'>Paired comparisons with the baseline</h2><p class='muted'>Per task and "
                 f"category, method − baseline in percentage points, 95 % paired bootstrap interval "
                 f"({resamples} resamples, harness.results.compare); * = the interval excludes 0.</p>")
    if not compared.empty:
        shown = compared[["model", "ratio", "compared", "level", "name", "n", "baseline", "method", "diff", "ci_low",
                          "ci_high"]].copy()
        shown["sig"] = compared["significant"].map({True: "*", False: ""})
        parts.append(_table(shown, cls="comparisons", percent=["baseline", "method"],
                            signed=["diff", "ci_low", "ci_high"]))
    parts += [f"<p class='muted'>{esc(p)}</p>" for p in compare_problems]

    task_options = "".join(f"<option value='{esc(k)}'>{esc(k.replace('_', ' '))}</option>" for k in kinds)
    parts.append(f"""<h2 id='samples-section'>Samples beside the baseline's</h2>
<p class='muted'>Pick a variant and a task; the filters apply to the variant's samples. Colours: correct, wrong,
partial credit. Long texts are cut at {max_chars} characters.</p>
<div class='controls'>
<label>model <select id='f-model'></select></label>
<label>variant <select id='f-variant'></select></label>
<label>task <select id='f-task'></select></label>
<label>verdict <select id='f-verdict'><option value='all'>all</option><option value='correct'>correct</option>
<option value='wrong'>wrong</option><option value='partial'>partial</option></select></label>
<label>failure kind <select id='f-kind'><option value='all'>all</option><option value='any'>any failure</option>
<option value='none'>no failure</option>{task_options}</select></label>
<label><input type='checkbox' id='f-changed'> only where the score differs from the baseline</label>
<span id='f-count' class='muted'></span></div>
<table id='samples'><colgroup><col style='width:6%'><col style='width:20%'><col style='width:22%'>
<col style='width:7%'><col style='width:7%'><col style='width:24%'><col style='width:7%'><col style='width:7%'>
</colgroup><thead><tr><th rowspan='2'>sample</th><th rowspan='2'>prompt</th>
<th colspan='3'>baseline</th><th colspan='3' id='variant-head'>variant</th></tr>
<tr><th>reply</th><th>extracted</th><th>verdict</th><th>reply</th><th>extracted</th><th>verdict</th></tr></thead>
<tbody></tbody></table>""")
    parts.append("<h2 id='provenance'>Provenance</h2><p class='muted'>Each task result's evaluation key (and the "
                 "checkpoint's) in the sweep's store (<code>python -m harness.store ls</code>), then what each task "
                 "recorded: generation settings, data checksums, tool versions, chat-template hash.</p>")
    parts.append(f"<details><summary>store keys of {len(keys)} task results</summary>{_table(keys, cls='keys')}"
                 "</details>")
    for task, prov in sorted(per_task.items()):
        parts.append(f"<details><summary>{esc(task)}</summary><pre>{esc(json.dumps(prov, indent=1, sort_keys=True))}"
                     "</pre></details>")
    parts.append(f"<script type='application/json' id='report-data'>{_script_json(data)}</script>")
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts)


def write_report(results_dir: str | Path, out: str | Path | None = None, **options) -> Path:
    """Write the report (atomically) to `out`, default results_dir/report.html; returns its path."""
    results_dir = Path(results_dir)
    out = Path(out) if out is not None else results_dir / REPORT_NAME
    page = build_html(results_dir, **options)
    atomic_write(out, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__.splitlines()[0])
    ap.add_argument("results_dir", type=Path, help="a sweep's results folder (results/<sweep>)")
    ap.add_argument("--out", type=Path, help=f"where to write the page (default RESULTS_DIR/{REPORT_NAME})")
    ap.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap rounds per comparison")
    ap.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS, help="longest text shown per cell")
    args = ap.parse_args(argv)
    try:
        path = write_report(args.results_dir, args.out, resamples=args.resamples, max_chars=args.max_chars)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
