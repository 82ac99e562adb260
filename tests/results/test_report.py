"""The failure kinds of a real run, and its HTML report opened in a real headless browser (Chromium).

The data is the demo sweep's committed results (`results/tiny`: the trained toy MoE, every method at
25 % and 50 %, served by vLLM and scored for real), so no server is started here. The browser is
Debian's Chromium driven by selenium (scripts/setup_browser.sh installs it; `make test` runs that first),
with every network request blocked, so a page that needed anything from outside would show it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from harness.tasks.failures import KINDS, METRIC_PREFIX, reply_failures
from tests.conftest import REPO

SWEEP = REPO / "results" / "tiny"
VARIANT = ("reap", 0.5)  # the variant the screenshot shows, beside the baseline
SHOWN_TASK = "toy_math"
SCREENSHOT_TASK = "toy_coding"  # the task where REAP 50 % fails most visibly (syntax errors)


@pytest.fixture(scope="module")
def run_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    samples = pd.read_parquet(SWEEP / "samples.parquet")
    if "output" not in samples.columns:
        pytest.fail(f"{SWEEP}/samples.parquet has no replies: re-run the demo sweep (make demo) with this harness")
    return pd.read_parquet(SWEEP / "results.parquet"), samples


# -- failure kinds of the real run --------------------------------------------------------------------------
def test_failure_columns_follow_from_the_replies(run_tables):
    """Each sample's reply kinds are what the detectors say of its stored reply and finish reason; MC samples
    (scored by log-likelihood) have none."""
    _, samples = run_tables
    generative = samples[samples["output"].notna()]
    assert set(samples.loc[samples["output"].isna(), "task"]) <= {"toy_mc", "arc_easy", "hellaswag"}
    assert samples.loc[samples["output"].isna(), [f"failure_{k}" for k in KINDS]].isna().all().all()
    for row in generative.itertuples():
        expected = reply_failures(row.output, row.finish_reason)
        got = {k: getattr(row, f"failure_{k}") for k in expected}
        assert got == expected, (row.task, row.sample_id, row.output[-120:])
        kinds = [k for k in KINDS if getattr(row, f"failure_{k}") is True]
        assert row.failures == ",".join(kinds)
    # The server's finish reason against the reply's length: cut exactly at the sweep's max_tokens.
    max_tokens = yaml.safe_load((REPO / "sweeps" / "tiny.yaml").read_text())["generation"]["max_tokens"]
    truncated = generative["failure_truncated"].astype(bool)
    assert (generative.loc[truncated, "completion_tokens"] == max_tokens).all()
    assert (generative.loc[~truncated, "completion_tokens"] < max_tokens).all()
    # The run has replies cut at max_tokens and replies in a loop; they are counted.
    assert truncated.any() and generative["failure_degenerate"].astype(bool).any()


def test_table_rates_are_the_samples_means(run_tables):
    """failure_rate:<kind> rows of results.parquet equal the per (variant, task) mean of samples.parquet's
    columns (the table is computed from the stored records, the parquet too: they must agree)."""
    results, samples = run_tables
    rates = results[results["metric"].str.startswith(METRIC_PREFIX)]
    assert not rates.empty and set(rates["task"]) == set(samples.loc[samples["output"].notna(), "task"])
    checked = 0
    for row in rates.itertuples():
        kind = row.metric.removeprefix(METRIC_PREFIX)
        sub = samples[(samples["method"] == row.method) & np.isclose(samples["ratio"], row.ratio)
                      & (samples["task"] == row.task)]
        flags = (sub["failures"] != "") if kind == "any" else sub[f"failure_{kind}"].astype(bool)
        assert row.value == pytest.approx(flags.mean()), (row.method, row.ratio, row.task, kind)
        assert row.n_samples == len(sub)
        checked += 1
    assert checked >= 13 * 7 * 4


def test_failure_figure_shows_the_table(run_tables):
    from harness.results.plots import figure_failures, variant_label

    results, _ = run_tables
    fig = figure_failures(results)
    images = [im for ax in fig.axes for im in ax.get_images() if im.get_gid() == "failures|toy-moe"]
    assert len(images) == 1
    grid = np.ma.filled(images[0].get_array(), np.nan)
    ax = images[0].axes
    rows = [t.get_text() for t in ax.get_yticklabels()]
    variants = len(results[["method", "ratio"]].drop_duplicates())  # the baseline and every method x ratio
    assert rows[0] == "Baseline" and len(rows) == variants == 13
    # The cell of REAP 50 % x (toy_math, no_answer) is the table's value, in %.
    cols = [t.get_text() for t in ax.get_xticklabels()]
    tasks = sorted(results.loc[results["metric"].str.startswith(METRIC_PREFIX), "task"].unique())
    kinds_per_task = {t: [k for k in KINDS if ((results["task"] == t) & (results["metric"] == METRIC_PREFIX + k)).any()]
                      for t in tasks}
    columns = [(t, k) for t in tasks for k in kinds_per_task[t]]
    assert cols == [k.replace("_", " ") for _, k in columns]
    i = rows.index(variant_label(*VARIANT))
    j = columns.index((SHOWN_TASK, "no_answer"))
    expected = results[(results["method"] == "reap") & (results["ratio"] == 0.5) & (results["task"] == SHOWN_TASK)
                       & (results["metric"] == METRIC_PREFIX + "no_answer")]["value"].item()
    assert grid[i, j] == pytest.approx(100 * expected)


# -- the HTML report in a browser ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    from harness.results.report import write_report

    out = tmp_path_factory.mktemp("report") / "report.html"
    return write_report(SWEEP, out, resamples=200)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("Chromium / chromedriver not found: run scripts/setup_browser.sh (make test does)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # Headless; every request that would leave the page goes to a closed port, so nothing can be fetched.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1600,1100",
                "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
                "--host-resolver-rules=MAP * ~NOTFOUND"):
        options.add_argument(arg)
    browser = webdriver.Chrome(options=options, service=Service(driver))
    try:
        yield browser
    finally:
        browser.quit()


def _choose(browser, select_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, select_id)).select_by_value(value)


def _rows(browser) -> list[str]:
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.CSS_SELECTOR, "#samples tbody tr.sample-row")
    return [tr.get_attribute("data-id") for tr in rows]


def test_report_opens_with_every_figure_and_nothing_from_outside(report, browser, run_tables):
    html = report.read_text()
    assert "<link" not in html and "<script src" not in html and "@import" not in html
    browser.get(report.as_uri())
    assert browser.title == "Sweep report: tiny"
    images = browser.execute_script(
        "return [...document.images].map(i => [i.dataset.figure, i.complete, i.naturalWidth, i.src.slice(0, 22)])")
    names = [i[0] for i in images]
    assert {"fig1_accuracy_vs_total_params", "fig2_task_bars", "fig_failure_kinds"} <= set(names)
    for name, complete, width, src in images:
        assert complete and width > 0, f"figure {name} did not load"
        assert src == "data:image/png;base64,"
    refs = browser.execute_script(
        "return [...document.querySelectorAll('[src],[href]')]"
        ".map(e => e.getAttribute('src') || e.getAttribute('href'))")
    assert all(r.startswith(("data:", "#")) for r in refs), [r[:60] for r in refs if not r.startswith("data:")]
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert [u for u in fetched if not u.startswith("data:")] == []
    # The tables are there: one failure-rate column per (task, kind) of the results table.
    results, _ = run_tables
    headers = browser.execute_script("return [...document.querySelectorAll('table.failures th')]"
                                     ".map(t => t.textContent)")
    n_columns = results[results["metric"].str.startswith(METRIC_PREFIX)][["task", "metric"]].drop_duplicates().shape[0]
    assert len(headers) == 2 + n_columns
    assert browser.execute_script("return document.querySelectorAll('table.comparisons tbody tr').length") > 0


def test_filters_show_the_samples_of_the_data(report, browser, run_tables, tmp_path):
    """Per task, the rows shown for REAP 50 % are that variant's samples; verdict and failure-kind filters
    keep exactly the samples the parquet says."""
    _, samples = run_tables
    browser.get(report.as_uri())
    method, ratio = VARIANT
    _choose(browser, "f-model", "toy-moe")
    _choose(browser, "f-variant", f"{method}@{ratio:g}")
    ours = samples[(samples["method"] == method) & np.isclose(samples["ratio"], ratio)]
    base = samples[samples["method"] == "baseline"].set_index(["task", "sample_id"])
    for task, sub in ours.groupby("task"):
        _choose(browser, "f-task", task)
        _choose(browser, "f-verdict", "all")
        _choose(browser, "f-kind", "all")
        assert sorted(_rows(browser)) == sorted(sub["sample_id"]), task
    sub = ours[ours["task"] == SHOWN_TASK]
    _choose(browser, "f-task", SHOWN_TASK)
    for verdict, mask in (("correct", sub["score"] == 1), ("wrong", sub["score"] == 0)):
        _choose(browser, "f-verdict", verdict)
        assert sorted(_rows(browser)) == sorted(sub.loc[mask, "sample_id"]), verdict
    _choose(browser, "f-verdict", "all")
    for kind in ("any", "none", "no_answer", "truncated", "degenerate"):
        _choose(browser, "f-kind", kind)
        mask = (sub["failures"] != "") if kind == "any" else (sub["failures"] == "") if kind == "none" else \
            sub[f"failure_{kind}"].astype(bool)
        assert sorted(_rows(browser)) == sorted(sub.loc[mask, "sample_id"]), kind
    _choose(browser, "f-kind", "all")
    browser.find_element("id", "f-changed").click()
    differs = [s for s, score in zip(sub["sample_id"], sub["score"], strict=True)
               if base.loc[(SHOWN_TASK, s), "score"] != score]
    assert sorted(_rows(browser)) == sorted(differs)
    # Side by side: each row shows the baseline's reply, then the variant's.
    first = browser.execute_script("""const tr = document.querySelector('#samples tbody tr.sample-row');
        return [tr.dataset.id, tr.cells[2].textContent, tr.cells[5].textContent];""")
    assert first[1].strip() == base.loc[(SHOWN_TASK, first[0]), "output"].strip()
    assert first[2].strip() == sub.set_index("sample_id").loc[first[0], "output"].strip()
    browser.find_element("id", "f-changed").click()

    # The screenshot of REAP 50 % beside the baseline (kept when HARNESS_REPORT_SCREENSHOT names a path).
    _choose(browser, "f-task", SCREENSHOT_TASK)
    assert len(_rows(browser)) == len(ours[ours["task"] == SCREENSHOT_TASK])
    browser.execute_script("document.getElementById('samples-section').scrollIntoView()")
    shot = tmp_path / f"report_reap50_{SCREENSHOT_TASK}.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    keep = os.environ.get("HARNESS_REPORT_SCREENSHOT")
    if keep:
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep)


def test_cli_says_what_is_missing(tmp_path, capsys):
    from harness.results.report import main

    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "results.parquet" in err and "harness.sweep" in err
