"""Per-sample sandbox start-up: a trivial program through `run_python`, before and after read isolation.

"Before" is harness/sandbox/api.py as it was at the branch point (`git merge-base HEAD main`,
or the file given with --before), loaded as a separate module; "after" is the current one
with every layer this machine grants, and each read-isolation layer alone. The runs are
interleaved (one of each in turn) so that load from other users of the machine hits all
variants alike. Prints median / 10th / 90th percentile wall time per run in milliseconds.

Two timings per variant: "as called" is what a caller of `run_python` waits, and
"exact" replaces `Popen.wait(timeout)` (which polls with growing sleeps, so a run is only
noticed at about 0.5, 1.5, 3.5, ... 31.5, 63.5 ms) by a blocking wait, in both modules
alike: that is the sandbox's own cost, which the polling would otherwise hide.

    .venv/bin/python benchmarks/sandbox_startup.py [--runs 50] [--before FILE] [--base REV]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRIVIAL = "print(sum(range(10)))\n"


def load_before(path: Path | None, base: str) -> tuple[object, str]:
    """The old sandbox module, from a file or from git at `base`'s merge base with HEAD."""
    if path is None:
        rev = subprocess.run(["git", "merge-base", "HEAD", base], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        source = subprocess.run(["git", "show", f"{rev}:harness/sandbox/api.py"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout
        path = Path(tempfile.mkdtemp(prefix="sandbox-before-")) / "sandbox_before.py"
        path.write_text(source)
        label = f"before ({rev[:10]})"
    else:
        label = f"before ({path})"
    spec = importlib.util.spec_from_file_location("sandbox_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module, label


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--before", type=Path, help="the old harness/sandbox/api.py (default: from git)")
    parser.add_argument("--base", default="main", help="branch whose merge base with HEAD is 'before'")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))  # this checkout's harness, however the script is started
    from harness.sandbox import api as sandbox

    before, before_label = load_before(args.before, args.base)
    started = time.perf_counter()
    layers = sandbox.isolation()["read_isolation"]
    probe_ms = (time.perf_counter() - started) * 1000
    variants = {before_label: lambda: before.run_python(TRIVIAL),
                f"after, default {'+'.join(layers) or 'no read isolation'}": lambda: sandbox.run_python(TRIVIAL)}
    for layer in layers:
        variants[f"after, {layer} only"] = lambda layer=layer: sandbox.run_python(TRIVIAL, read_isolation=[layer])
    variants["after, no read isolation"] = lambda: sandbox.run_python(TRIVIAL, read_isolation=[])
    for run in variants.values():  # warm caches
        assert run().stdout.strip() == "45"
    print(f"isolation() probe, once per process: {probe_ms:.1f} ms; layers granted: {layers or 'none'}")
    print(f"{args.runs} runs of a trivial program per variant, interleaved")
    polling_wait = subprocess.Popen.wait
    for mode in ("as called", "exact"):
        if mode == "exact":  # the trivial program never reaches its timeout: a blocking wait is the same
            subprocess.Popen.wait = lambda proc, timeout=None: polling_wait(proc)
        try:
            times = measure(variants, args.runs)
        finally:
            subprocess.Popen.wait = polling_wait
        print(f"\n{mode}:\n{'variant':44s} {'median_ms':>9s} {'p10_ms':>7s} {'p90_ms':>7s} {'vs before':>9s}")
        base = statistics.median(times[before_label])
        for name, values in times.items():
            median = statistics.median(values)
            print(f"{name:44s} {median:9.1f} {percentile(values, 0.1):7.1f} {percentile(values, 0.9):7.1f} "
                  f"{(median / base - 1) * 100:+8.1f}%")


def measure(variants: dict, runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(runs):
        for name, run in variants.items():
            t0 = time.perf_counter()
            result = run()
            times[name].append((time.perf_counter() - t0) * 1000)
            if not result.ok or result.stdout.strip() != "45":
                sys.exit(f"{name}: the trivial program failed: {result.failure} {result.stderr[-500:]}")
    return times

if __name__ == "__main__":
    main()
