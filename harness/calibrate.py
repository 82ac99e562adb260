"""Calibrate one model outside a sweep: record its routing statistics.

    python -m harness.calibrate MODEL --data FILE_OR_HF_NAME [--data ...] \\
        --samples N --length L --out DIR [--mean-out] [--router-similarity] [--gated-out] [--sequential] \\
        [--device auto|cpu|cuda|cuda:N] [--dtype auto|bfloat16|float32|float16]

MODEL is a local checkpoint directory or a Hugging Face id (resolved to its commit, through
the Hugging Face cache; HF_HUB_OFFLINE=1 reads only the cache). Several --data values make a
composite set; give each its share as NAME:COUNT (the counts must add up to --samples).
Without --data the paper's default (evol-codealpaca-v1, needs internet) is used. DIR is a
store, e.g. a sweep's work directory: the statistics land in DIR/calibration/<key>/
(statistics.safetensors + manifest.json), under the same key a sweep would use, and an
existing result for the same model, data, dtype and statistics is reused (--force recomputes).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from harness.archs import UnsupportedModelError, get_arch


def _dataset(value: str) -> dict:
    source, sep, count = value.rpartition(":")
    if sep and count.isdigit() and source:
        return {"source": source, "samples": int(count)}
    return {"source": value}


def stored_calibration(store, source, spec, *, extras: Iterable[str] = (),
                       dtype: str = "auto", sequential: bool = False, device: str | None = None,
                       batch_size: int = 8, progress: bool = True, force: bool = False) -> tuple[str, Path]:
    """Calibrate `source` (a harness.checkpoint.hub.ModelSource) into the store at --out, once per key;
    returns (key, directory).
    The same key as a sweep's calibration stage, so a sweep can reuse this store's statistics."""
    from harness.calibration.run import calibrate, calibration_settings_for
    from harness.sweep.store import stage_key

    settings = calibration_settings_for(source, spec, extras=extras,
                                        dtype=dtype)
    key = stage_key("calibration", settings)
    out = store.dir("calibration", key)
    if store.is_done("calibration", key) and not force:
        return key, out
    store.reset("calibration", key)
    stats = calibrate(source.directory(), spec, extras=extras,
                      sequential=sequential, device=device, dtype=dtype, batch_size=batch_size, progress=progress)
    stats.manifest["key"] = key
    stats.save(out)
    store.mark_done("calibration", key, {"model": source.describe()}, settings=settings)
    return key, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model directory, or Hugging Face id")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit; default main)")
    parser.add_argument("--data", action="append", default=[], metavar="SOURCE[:COUNT]",
                        help="local .json/.jsonl/.parquet file or HF dataset name (repeatable)")
    parser.add_argument("--samples", type=int, default=1024, help="N packed sequences (default 1024)")
    parser.add_argument("--length", type=int, default=2048, help="L tokens per sequence (default 2048)")
    parser.add_argument("--packing", choices=["concat", "pad", "reap_repo"], default="concat",
                        help="concat: one eos-joined stream cut into rows; pad: one record per row; reap_repo: "
                        "as the paper's code, rows start with fresh uniformly drawn records")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="store directory (statistics go to OUT/calibration/<key>/)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--mean-out", action="store_true", help="also mean expert output over all tokens "
                        "(HC-SMoE; runs every expert on every token)")
    parser.add_argument("--router-similarity", action="store_true", help="also router-logit similarity (M-SMoE)")
    parser.add_argument("--gated-out", action="store_true", help="also the experts' summed gated outputs (REAM)")
    parser.add_argument("--sequential", action="store_true",
                        help="one decoder layer in memory at a time (models larger than memory)")
    parser.add_argument("--device", default="auto", help="auto (every visible GPU, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (the checkpoint's), bfloat16, float32, float16")
    parser.add_argument("--force", action="store_true", help="recompute even if cached")
    args = parser.parse_args(argv)

    from pydantic import ValidationError

    from harness.calibration.data import CalibrationSpec
    from harness.calibration.run import CalibrationDeviceError
    from harness.calibration.statistics import CalibrationStatistics
    from harness.checkpoint.hub import ModelUnavailableError, resolve
    from harness.sweep.store import Store

    try:
        source = resolve(args.model, args.revision, Path.cwd())
        get_arch(source.metadata_dir)
        if args.data:
            spec = CalibrationSpec(datasets=[_dataset(d) for d in args.data], samples=args.samples,
                                   length=args.length, packing=args.packing, seed=args.seed, device=args.device)
        else:
            default = CalibrationSpec.default("code", samples=args.samples, length=args.length)
            spec = CalibrationSpec(**{**default.model_dump(), "packing": args.packing, "seed": args.seed,
                                      "device": args.device})
    except (UnsupportedModelError, ModelUnavailableError, FileNotFoundError, ValidationError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        # Data problems surface while tokenising, before the model is loaded.
        extras = {name for name, wanted in (("mean_out", args.mean_out),
                                            ("router_similarity", args.router_similarity),
                                            ("gated_out", args.gated_out)) if wanted}
        _, out_dir = stored_calibration(Store(args.out), source, spec, extras=extras, dtype=args.dtype,
                                        sequential=args.sequential, batch_size=args.batch_size, progress=True,
                                        force=args.force)
    except (FileNotFoundError, ValueError, CalibrationDeviceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stats = CalibrationStatistics.load(out_dir)
    manifest = stats.manifest
    print(f"statistics: {out_dir}")
    print(f"  {manifest['family']}: {len(manifest['moe_layers'])} MoE layers x {manifest['num_experts']} experts, "
          f"{manifest['tokens']} tokens, {manifest['run']['seconds']} s")
    for index, layer in stats.layers.items():
        counts = " ".join(str(int(c)) for c in layer.count.tolist())
        print(f"  layer {index:3d} counts: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
