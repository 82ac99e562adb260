"""Calibration's peak host memory, measured against harness.sweep.costs' estimate, normal and sequential mode.

    .venv/bin/python benchmarks/costs_memory.py [--out results/costs_memory.json]

Builds zoo models scaled up so that their weights, not the Python runtime, dominate memory (float32 and
block FP8), calibrates each in a fresh process on the CPU (`python -m harness.calibrate`), reads the
process's peak resident set (ru_maxrss), and prints it beside the estimate. The runtime's own footprint
(interpreter, torch, transformers: harness.sweep.costs.HOST_RUNTIME_BYTES) is measured here too, by the same
command on the unscaled zoo model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "fixtures" / "calibration" / "code_instruct.jsonl"
SAMPLES, LENGTH, BATCH = 16, 128, 4

# name: (zoo family, config overrides, quantisation)
MODELS = {
    "qwen3_moe tiny": ("qwen3_moe", {}, None),
    "qwen3_moe x large": ("qwen3_moe", {"hidden_size": 1024, "moe_intermediate_size": 1024, "num_experts": 32,
                                        "num_hidden_layers": 4, "head_dim": 64, "num_attention_heads": 8,
                                        "num_key_value_heads": 2}, None),
    "glm4_moe x large": ("glm4_moe", {"hidden_size": 1024, "moe_intermediate_size": 768, "n_routed_experts": 32,
                                      "intermediate_size": 2048, "num_hidden_layers": 4, "num_attention_heads": 8,
                                      "num_key_value_heads": 2}, None),
    "qwen3_moe x large fp8": ("qwen3_moe", {"hidden_size": 1024, "moe_intermediate_size": 1024, "num_experts": 32,
                                            "num_hidden_layers": 4, "head_dim": 64, "num_attention_heads": 8,
                                            "num_key_value_heads": 2}, "fp8"),
}

_WRAPPER = ("import resource, runpy, sys\n"
            "sys.argv = ['harness.calibrate'] + sys.argv[1:]\n"
            "try:\n"
            "    runpy.run_module('harness.calibrate', run_name='__main__')\n"
            "except SystemExit as exc:\n"
            "    code = exc.code\n"
            "else:\n"
            "    code = 0\n"
            "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
            "sys.exit(code)\n")


def measure(model_dir: Path, sequential: bool, out: Path) -> int:
    """Peak resident bytes of one calibration run in a fresh process."""
    cmd = [sys.executable, "-c", _WRAPPER, str(model_dir), "--data", str(DATA), "--samples", str(SAMPLES),
           "--length", str(LENGTH), "--batch-size", str(BATCH), "--device", "cpu", "--out", str(out), "--force",
           "--packing", "pad"]
    if sequential:
        cmd.append("--sequential")
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**__import__("os").environ,
                                                                                 "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    line = next(x for x in done.stderr.splitlines() if x.startswith("MAXRSS_KB"))
    return int(line.split()[1]) * 1024


def main() -> int:
    from harness.standins.zoo import build_model
    from harness.sweep.costs import ModelShape, calibration_memory, human

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (family, overrides, quant) in MODELS.items():
            model = build_model(family, Path(tmp) / name.replace(" ", "_"), overrides=overrides or None, quant=quant)
            shape = ModelShape.from_dir(model)
            from harness.calibration.run import resolve_dtype

            dtype = resolve_dtype("auto", shape.config)
            for sequential in (False, True):
                measured = measure(model, sequential, Path(tmp) / "store")
                estimate = calibration_memory(shape, samples=SAMPLES, length=LENGTH, batch_size=BATCH, dtype=dtype,
                                              sequential=sequential, on_gpu=False).host
                row = {"model": name, "mode": "sequential" if sequential else "normal", "dtype": dtype,
                       "weights_bytes": shape.bytes, "measured_bytes": measured, "estimated_bytes": estimate,
                       "error": round((estimate - measured) / measured, 4)}
                rows.append(row)
                print(f"{name:<24} {row['mode']:<10} weights {human(shape.bytes):>10}  measured peak "
                      f"{human(measured):>10}  estimated {human(estimate):>10}  ({row['error']:+.1%})", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if all(abs(r["error"]) <= 0.25 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
