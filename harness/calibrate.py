"""Calibrate one model outside a sweep: record its routing statistics.

    python -m harness.calibrate MODEL --data FILE_OR_HF_NAME [--data ...] \\
        --samples N --length L --out DIR [--mean-out] [--router-similarity] [--sequential]

Several --data values make a composite set; give each its share as NAME:COUNT
(the counts must add up to --samples). Without --data the paper's default
(evol-codealpaca-v1, needs internet) is used. The statistics land in
DIR/<content hash>/ (statistics.safetensors + manifest.json); an existing result for
the same model, data and options is reused.
"""

from __future__ import annotations

import argparse
import sys

from harness.archs import UnsupportedModelError, get_arch


def _dataset(value: str) -> dict:
    source, sep, count = value.rpartition(":")
    if sep and count.isdigit() and source:
        return {"source": source, "samples": int(count)}
    return {"source": value}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model directory (or HF id) with config.json")
    parser.add_argument("--data", action="append", default=[], metavar="SOURCE[:COUNT]",
                        help="local .json/.jsonl/.parquet file or HF dataset name (repeatable)")
    parser.add_argument("--samples", type=int, default=1024, help="N packed sequences (default 1024)")
    parser.add_argument("--length", type=int, default=2048, help="L tokens per sequence (default 2048)")
    parser.add_argument("--packing", choices=["concat", "pad", "reap_repo"], default="concat",
                        help="concat: one eos-joined stream cut into rows; pad: one record per row; reap_repo: "
                        "as the paper's code, rows start with fresh uniformly drawn records")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="statistics root directory")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--mean-out", action="store_true", help="also mean expert output over all tokens "
                        "(HC-SMoE; runs every expert on every token)")
    parser.add_argument("--router-similarity", action="store_true", help="also router-logit similarity (M-SMoE)")
    parser.add_argument("--sequential", action="store_true",
                        help="one decoder layer in memory at a time (models larger than memory)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--force", action="store_true", help="recompute even if cached")
    args = parser.parse_args(argv)

    from pydantic import ValidationError

    from harness.calibration.data import CalibrationSpec
    from harness.calibration.run import run_calibration

    try:
        get_arch(args.model)
        if args.data:
            spec = CalibrationSpec(datasets=[_dataset(d) for d in args.data], samples=args.samples,
                                   length=args.length, packing=args.packing, seed=args.seed)
        else:
            spec = CalibrationSpec.default("code", samples=args.samples, length=args.length).model_copy(
                update={"packing": args.packing, "seed": args.seed})
    except (UnsupportedModelError, FileNotFoundError, ValidationError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        # Data problems surface while tokenising, before the model is loaded.
        out_dir, stats = run_calibration(args.model, spec, args.out, batch_size=args.batch_size,
                                         mean_out=args.mean_out, router_similarity=args.router_similarity,
                                         sequential=args.sequential, device=args.device, progress=True)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
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
