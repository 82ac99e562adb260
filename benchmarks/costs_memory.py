"""Calibration's peak host memory, measured against harness.sweep.costs' estimate, normal and sequential mode.

    .venv/bin/python benchmarks/costs_memory.py [--only NAME ...] [--out results/costs_memory.json]

Builds zoo models of every family scaled up so that their weights, not the Python runtime, dominate memory (stored
in bfloat16 as the seed checkpoints are, plus block FP8 and packed int4), calibrates each in a fresh process on the
CPU (`python -m harness.calibrate`), reads the process's peak resident set, and prints it beside the estimate.
The peak is VmHWM from /proc/self/status: the high-water mark of the process's own memory. (`ru_maxrss` is not
used: Linux carries a parent's high-water mark into a child across fork and exec, so a child started by a process
that built a large model reports at least the parent's peak.) The runtime's own footprint (interpreter, torch,
transformers: harness.sweep.costs.HOST_RUNTIME_BYTES) shows in the unscaled zoo model's row.
tests/sweep/test_costs.py asserts every row within 25 % (`-m slow` for all of them).
Measure with the machine otherwise quiet: a peak taken while other heavy jobs ran was lower (Llama-4 once
measured 1092 / 897 MiB, normal / sequential, where it measures 1260 / 1034 MiB alone, reproducibly), most
likely because the kernel reclaims clean pages of the memory-mapped checkpoint from the process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "fixtures" / "calibration" / "code_instruct.jsonl"
SAMPLES, LENGTH, BATCH = 16, 128, 4
TOLERANCE = 0.25

_EXPERTS_KEY = {"qwen3_moe": "num_experts", "mixtral": "num_local_experts", "ernie4_5_moe": "moe_num_experts",
                "glm4_moe": "n_routed_experts", "glm4_moe_grouped": "n_routed_experts",
                "deepseek_v3": "n_routed_experts", "llama4_text": "num_local_experts"}
_EXPERT_WIDTH_KEY = {"mixtral": "intermediate_size", "llama4_text": "intermediate_size"}


def scaled(family: str) -> dict:
    """Overrides that make a zoo family's weights a few hundred MB: 4 layers, hidden 1024, 32 experts of 768."""
    found = {"hidden_size": 1024, "num_hidden_layers": 4, _EXPERTS_KEY[family]: 32,
             _EXPERT_WIDTH_KEY.get(family, "moe_intermediate_size"): 768}
    if family != "deepseek_v3":  # its attention (MLA) keeps the zoo's heads and latent sizes
        found["num_attention_heads"] = 8
    if family == "glm4_moe_grouped":
        found["n_group"] = 4
    if family not in ("deepseek_v3",):
        found["num_key_value_heads"] = 2
    if family == "llama4_text":
        found["intermediate_size_mlp"] = 1536
    return found


# name: (zoo family, config overrides, stored as: "bfloat16", "float32" or a zoo quantisation)
MODELS = {
    "qwen3_moe tiny": ("qwen3_moe", {}, "float32"),
    **{f"{family} x large bf16": (family, scaled(family), "bfloat16")
       for family in ("qwen3_moe", "mixtral", "ernie4_5_moe", "glm4_moe", "glm4_moe_grouped", "deepseek_v3",
                      "llama4_text")},
    "qwen3_moe x large fp8": ("qwen3_moe", scaled("qwen3_moe"), "fp8"),
    "deepseek_v3 x large w4a16": ("deepseek_v3", scaled("deepseek_v3"), "w4a16"),
}

_WRAPPER = ("import runpy, sys\n"
            "sys.argv = ['harness.calibrate'] + sys.argv[1:]\n"
            "try:\n"
            "    runpy.run_module('harness.calibrate', run_name='__main__')\n"
            "except SystemExit as exc:\n"
            "    code = exc.code\n"
            "else:\n"
            "    code = 0\n"
            "peak = next(line for line in open('/proc/self/status') if line.startswith('VmHWM'))\n"
            "print('VMHWM_KB', peak.split()[1], file=sys.stderr)\n"
            "sys.exit(code)\n")


def build(name: str, out: Path) -> Path:
    """The zoo model `name` of MODELS, stored as MODELS says."""
    from harness.standins.zoo import build_model

    family, overrides, stored = MODELS[name]
    quant = stored if stored in ("fp8", "w4a16") else None
    model = build_model(family, out, overrides=overrides or None, quant=quant)
    if stored == "bfloat16":
        import torch
        from safetensors.torch import load_file, save_file

        for shard in model.glob("*.safetensors"):
            tensors = load_file(shard)
            save_file({k: v if k.endswith("e_score_correction_bias") or not v.is_floating_point() else
                       v.to(torch.bfloat16) for k, v in tensors.items()}, shard, metadata={"format": "pt"})
        config = json.loads((model / "config.json").read_text())
        config["dtype"] = "bfloat16"
        (model / "config.json").write_text(json.dumps(config))
        index = model / "model.safetensors.index.json"
        if index.is_file():  # several shards: the index stays, with the new total
            data = json.loads(index.read_text())
            data["metadata"]["total_size"] = sum(p.stat().st_size for p in model.glob("*.safetensors"))
            index.write_text(json.dumps(data, indent=2))
    return model


def measure(model_dir: Path, sequential: bool, out: Path) -> int:
    """Peak resident bytes (VmHWM) of one calibration run in a fresh process."""
    cmd = [sys.executable, "-c", _WRAPPER, str(model_dir), "--data", str(DATA), "--samples", str(SAMPLES),
           "--length", str(LENGTH), "--batch-size", str(BATCH), "--device", "cpu", "--out", str(out), "--force",
           "--packing", "pad"]
    if sequential:
        cmd.append("--sequential")
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    line = next(x for x in done.stderr.splitlines() if x.startswith("VMHWM_KB"))
    return int(line.split()[1]) * 1024


def rows(names, root: Path, echo: bool = False) -> list[dict]:
    """Measured and estimated peaks of the named models, normal and sequential."""
    from harness.calibration.run import resolve_dtype
    from harness.sweep.costs import ModelShape, calibration_memory, human

    found = []
    for name in names:
        model = build(name, root / name.replace(" ", "_"))
        shape = ModelShape.from_dir(model)
        dtype = resolve_dtype("auto", shape.config)
        for sequential in (False, True):
            measured = measure(model, sequential, root / "store")
            estimate = calibration_memory(shape, samples=SAMPLES, length=LENGTH, batch_size=BATCH, dtype=dtype,
                                          sequential=sequential, on_gpu=False).host
            row = {"model": name, "mode": "sequential" if sequential else "normal", "dtype": dtype,
                   "weights_bytes": shape.bytes, "measured_bytes": measured, "estimated_bytes": estimate,
                   # the weights as calibration holds them (dequantised, in its dtype)
                   "compute_bytes": shape.numel_in_forward() * (4 if dtype == "float32" else 2),
                   "error": round((estimate - measured) / measured, 4)}
            found.append(row)
            if echo:
                print(f"{name:<28} {row['mode']:<10} {dtype:<8} stored {human(shape.bytes):>10}  measured peak "
                      f"{human(measured):>10}  estimated {human(estimate):>10}  ({row['error']:+.1%})", flush=True)
        shutil.rmtree(model)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], choices=list(MODELS), metavar="NAME",
                        help=f"measure only these (default all): {', '.join(MODELS)}")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        found = rows(args.only or list(MODELS), Path(tmp), echo=True)
    if args.out:
        Path(args.out).write_text(json.dumps(found, indent=1) + "\n")
    return 0 if all(abs(r["error"]) <= TOLERANCE for r in found) else 1


if __name__ == "__main__":
    sys.exit(main())
