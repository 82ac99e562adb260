"""Compress one checkpoint: calibration statistics + method + ratio -> plan -> new checkpoint.

    python -m harness.compress --stats DIR --method reap --ratio 0.5 --model SRC --out DST \\
        [--method-config JSON] [--overwrite]

DIR is a saved calibration-statistics directory (statistics.safetensors + manifest.json,
as written by `python -m harness.calibrate`). The method, its options, the ratio and the
statistics are all checked before anything is written; the checkpoint appears at DST
atomically, with plan.json and recipe.json inside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class CompressError(ValueError):
    """A request that cannot be carried out; the message says what to change."""


def _method_config(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise CompressError(f"--method-config is not valid JSON ({error}): {text!r}") from error
    if not isinstance(value, dict):
        raise CompressError(f"--method-config must be a JSON object, got {text!r}")
    return value


def plan_from_files(stats_dir: str | Path, method_name: str, ratio: float, model: str | Path,
              method_config: dict | None = None):
    """The plan for `model` at `ratio` from a statistics directory; every check that needs no writing, as
    CompressError (harness.methods.make_plan makes the plan)."""
    from pydantic import ValidationError

    from harness.archs import read_config
    from harness.calibration.statistics import CalibrationStatistics
    from harness.methods import StatisticsMismatchError, UnknownMethodError, get_method, make_plan
    from harness.methods.base import PlanningError
    from harness.methods.constraints import ExpertConstraints, InfeasibleRatioError

    try:
        get_method(method_name, method_config or {})  # an unknown name or a bad option, before reading anything
    except UnknownMethodError as error:
        raise CompressError(str(error)) from error
    except ValidationError as error:
        raise CompressError(f"invalid --method-config for {method_name!r}: {error}") from error
    config = read_config(model)
    try:
        ExpertConstraints.from_config(config).target_count(ratio)
    except InfeasibleRatioError as error:
        raise CompressError(str(error)) from error
    stats_path = Path(stats_dir)
    if not (stats_path / "manifest.json").is_file() or not (stats_path / "statistics.safetensors").is_file():
        raise CompressError(f"{stats_path} is not a calibration-statistics directory (needs manifest.json and "
                            f"statistics.safetensors; make one with `python -m harness.calibrate`)")
    try:
        return make_plan(CalibrationStatistics.load(stats_path), method_name, method_config, ratio, config)
    except StatisticsMismatchError as error:
        raise CompressError(f"{error} ({model})") from error
    except (InfeasibleRatioError, PlanningError) as error:
        raise CompressError(str(error)) from error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.compress", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stats", required=True, help="calibration-statistics directory")
    parser.add_argument("--method", required=True, help="compression method (e.g. reap, hc_smoe)")
    parser.add_argument("--ratio", required=True, type=float, help="fraction of experts removed, e.g. 0.5")
    parser.add_argument("--model", required=True, help="source checkpoint directory")
    parser.add_argument("--out", required=True, help="output checkpoint directory")
    parser.add_argument("--method-config", help="method options as a JSON object")
    parser.add_argument("--materialisation", default="shared_slots", help="how merged experts are stored")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)

    from harness.archs import UnsupportedModelError
    from harness.checkpoint import MATERIALISATIONS, CheckpointError, write_checkpoint

    try:
        if args.materialisation not in MATERIALISATIONS:
            raise CompressError(f"unknown --materialisation {args.materialisation!r}; "
                                f"available: {', '.join(MATERIALISATIONS)}")
        if Path(args.out).exists() and not args.overwrite:
            raise CompressError(f"{args.out} already exists; pass --overwrite to replace it")
        plan = plan_from_files(args.stats, args.method, args.ratio, args.model, _method_config(args.method_config))
        counts = sorted(set(plan.groups_per_layer.values()))
        per_layer = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]} (total {plan.total_groups})"
        print(f"plan: {plan.method} at ratio {plan.ratio:g}: {per_layer} experts per layer "
              f"({plan.kind}), plan hash {plan.plan_hash()}", file=sys.stderr)
        info = write_checkpoint(plan, args.model, args.out, materialisation=args.materialisation,
                                progress=True, overwrite=args.overwrite)
    except (CompressError, CheckpointError, UnsupportedModelError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"checkpoint: {info.path}")
    print(f"  parameters: {info.total_params:,} total, {info.activated_params:,} activated "
          f"(source: {info.recipe['source']['total_params']:,} / {info.recipe['source']['activated_params']:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
