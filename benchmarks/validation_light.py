"""Seconds of a fully cached sweep re-run and of `--dry-run`, here and in other checkouts (issue 26: validation
stays light; goal under 5 s each for the demo).

    .venv/bin/python benchmarks/validation_light.py [--sweep sweeps/tiny.yaml] [--repeat 3] [--baseline DIR ...]
                                                    [--dry-run-only]

For each checkout (this one, then every `--baseline DIR`, e.g. `git archive <commit> | tar -x -C DIR`) it times,
in fresh processes with `PYTHONPATH` set to the checkout and the repository root as working directory:

- `cached rerun`: `python -m harness.sweep SWEEP --no-progress` on the sweep's own work directory, which must be
  fully computed already (the script runs the sweep once first when it is not, and says so: that is long);
- `dry run, cached`: `--dry-run` on the same work directory;
- `dry run, nothing cached`: `--dry-run` of a copy of the sweep whose work and results directories are empty
  (what a new user sees first: calibration still to do, so its data is checked).

`--dry-run-only` times the sweep's `--dry-run` as its work directory stands (nothing is run first).
Runs alternate between checkouts so that a machine's changing load falls on all of them alike; the table gives
the median and the fastest of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


# `python -m` would put the working directory (this repository) first on sys.path, ahead of PYTHONPATH; the
# checkout under test goes first instead, whichever it is.
_RUN = ("import runpy, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import harness\n"
        "assert harness.__file__.startswith(sys.argv[1]), harness.__file__\n"
        "sys.argv = ['harness.sweep'] + sys.argv[2:]\n"
        "runpy.run_module('harness.sweep', run_name='__main__')\n")


def _timed(checkout: Path, args: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one run in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _RUN, str(checkout), *args], cwd=REPO, env=env,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{checkout}: harness.sweep {' '.join(args)} exited {done.returncode}:\n"
                           f"{done.stderr[-3000:]}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _fully_cached(sweep: Path) -> bool:
    """Whether a dry run of `sweep` finds nothing to do (every stage cached, every evaluation stored)."""
    done = subprocess.run([sys.executable, "-m", "harness.sweep", str(sweep), "--dry-run", "--no-progress"],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    evals = re.findall(r"eval (\d+)/(\d+) cached", done.stdout)
    return (done.returncode == 0 and bool(evals) and all(a == b for a, b in evals)
            and not re.search(r"\bto do\b|checkpoint evicted", done.stdout.split("\ncost")[0]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default="sweeps/tiny.yaml", help="sweep file (relative to the repository root)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", action="append", default=[], type=Path, metavar="DIR",
                        help="another checkout to time the same way (e.g. the commit before a change)")
    parser.add_argument("--dry-run-only", action="store_true", help="only `--dry-run`, on the work directory as is")
    args = parser.parse_args()
    sweep = (REPO / args.sweep).resolve()
    if not args.dry_run_only and not _fully_cached(sweep):
        print(f"{args.sweep} is not fully computed yet: running it once first (this is the long part)", flush=True)
        subprocess.run([sys.executable, "-m", "harness.sweep", str(sweep), "--no-progress"], cwd=REPO, check=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    checkouts = [REPO, *(p.resolve() for p in args.baseline)]
    times: dict[tuple[str, Path], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / f"{sweep.stem}-fresh.yaml"
        body = yaml.safe_load(sweep.read_text())
        body.update(name=body.get("name", sweep.stem), work_dir=str(Path(tmp) / "work"),
                    results_dir=str(Path(tmp) / "results"))
        fresh.write_text(yaml.safe_dump(body, sort_keys=False))
        cases = {"cached rerun": [str(sweep), "--no-progress"],
                 "dry run, cached": [str(sweep), "--dry-run", "--no-progress"],
                 "dry run, nothing cached": [str(fresh), "--dry-run", "--no-progress"]}
        if args.dry_run_only:
            cases = {"dry run": [str(sweep), "--dry-run", "--no-progress"]}
        for _ in range(args.repeat):
            for case, argv in cases.items():
                for checkout in checkouts:
                    times.setdefault((case, checkout), []).append(_timed(checkout, argv))
    print(f"\n{args.sweep}, {args.repeat} run(s) each: wall seconds median / fastest, and CPU seconds (user + "
          f"system, what an idle machine would take) median; load average now {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPU(s)")
    print(f"{'case':<26}" + "".join(f"{str(c):>40}" for c in checkouts))
    for case in cases:
        cells = []
        for c in checkouts:
            wall = [w for w, _ in times[(case, c)]]
            cpu = [u for _, u in times[(case, c)]]
            cells.append(f"{statistics.median(wall):.1f} / {min(wall):.1f} s wall, {statistics.median(cpu):.1f} s CPU")
        print(f"{case:<26}" + "".join(f"{cell:>40}" for cell in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
