"""Calibration cost: observer overhead over a plain forward, and sequential-mode memory.

    .venv/bin/python benchmarks/calibration_overhead.py            # overhead ratios
    .venv/bin/python benchmarks/calibration_overhead.py --memory   # + peak RSS, >= 2 GB model

Overhead: the same token rows through (a) a plain forward, (b) the observer with
routed-token statistics, (c) the observer with mean_out too. Memory: peak resident
memory of normal vs sequential calibration, each in a fresh subprocess.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A zoo qwen3_moe scaled up so one pass takes seconds on a CPU.
OVERHEAD_MODEL = dict(hidden_size=512, intermediate_size=1024, moe_intermediate_size=256,
                      num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                      num_experts=32, num_experts_per_tok=4)
# ~2.3 GB in float32.
MEMORY_MODEL = dict(hidden_size=1024, intermediate_size=2048, moe_intermediate_size=512,
                    num_hidden_layers=10, num_attention_heads=16, num_key_value_heads=4,
                    num_experts=32, num_experts_per_tok=4)


def _tokens(samples: int, length: int, vocab: int):
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (samples, length), generator=generator)
    return ids, torch.ones_like(ids)


def overhead(model_dir: Path, samples: int, length: int, batch_size: int, repeats: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from harness.archs import get_arch
    from harness.calibration.run import calibrate_loaded

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    arch = get_arch(model_dir)
    ids, mask = _tokens(samples, length, model.config.vocab_size)

    def plain():
        with torch.no_grad():
            for start in range(0, samples, batch_size):
                model(input_ids=ids[start:start + batch_size], attention_mask=mask[start:start + batch_size],
                      use_cache=False)

    def best(fn):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return min(times)

    t_plain = best(plain)
    t_routed = best(lambda: calibrate_loaded(model, arch, ids, mask, batch_size=batch_size))
    t_mean = best(lambda: calibrate_loaded(model, arch, ids, mask, batch_size=batch_size, extras={"mean_out"}))
    everything = {"mean_out", "router_similarity"}
    t_all = best(lambda: calibrate_loaded(model, arch, ids, mask, batch_size=batch_size, extras=everything))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: qwen3_moe scaled, {params:.0f} M params, {samples}x{length} tokens, batch {batch_size}, "
          f"torch threads {torch.get_num_threads()}, best of {repeats}")
    print(f"plain forward                 {t_plain:7.2f} s")
    print(f"observer, routed statistics   {t_routed:7.2f} s   ratio {t_routed / t_plain:5.2f}  (goal <= 1.1)")
    print(f"observer, + mean_out          {t_mean:7.2f} s   ratio {t_mean / t_plain:5.2f}")
    print(f"observer, + mean_out + router {t_all:7.2f} s   ratio {t_all / t_plain:5.2f}")


def _peak_mb() -> float:
    """This process's peak resident memory (VmHWM). Unlike ru_maxrss, it is not inherited
    from the parent across fork + exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _peak_child(model_dir: Path, sequential: bool, samples: int, length: int) -> dict:
    code = f"""
import json, time, torch
from transformers import AutoModelForCausalLM
from harness.archs import get_arch
from harness.calibration.run import calibrate_loaded, calibrate_sequential
from benchmarks.calibration_overhead import _tokens, _peak_mb
ids, mask = _tokens({samples}, {length}, {json.loads((model_dir / "config.json").read_text())["vocab_size"]})
started = time.perf_counter()
if {sequential}:
    stats = calibrate_sequential({str(model_dir)!r}, ids, mask, batch_size=4)
else:
    model = AutoModelForCausalLM.from_pretrained({str(model_dir)!r}, dtype=torch.float32).eval()
    stats = calibrate_loaded(model, get_arch({str(model_dir)!r}), ids, mask, batch_size=4)
print(json.dumps({{"peak_rss_mb": _peak_mb(),
                  "seconds": time.perf_counter() - started,
                  "reap_sum_first": float(stats[min(stats)].reap_sum.sum())}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(root: Path, samples: int, length: int) -> None:
    from harness.standins.zoo import build_model

    model_dir = build_model("qwen3_moe", root / "big", overrides=MEMORY_MODEL)
    size_gb = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / 1e9
    baseline = subprocess.run([sys.executable, "-c", "import torch, transformers; "
                               "from benchmarks.calibration_overhead import _peak_mb; print(_peak_mb())"],
                              capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    normal = _peak_child(model_dir, False, samples, length)
    sequential = _peak_child(model_dir, True, samples, length)
    layer_gb = size_gb / MEMORY_MODEL["num_hidden_layers"]
    print(f"memory model: {size_gb:.2f} GB on disk, ~{layer_gb:.2f} GB per decoder layer; "
          f"{samples}x{length} tokens; python+torch+transformers alone: {float(baseline.stdout):.0f} MB")
    print(f"normal calibration     peak RSS {normal['peak_rss_mb']:7.0f} MB  {normal['seconds']:6.1f} s")
    print(f"sequential calibration peak RSS {sequential['peak_rss_mb']:7.0f} MB  {sequential['seconds']:6.1f} s")
    same = abs(normal["reap_sum_first"] - sequential["reap_sum_first"]) < 1e-6 * abs(normal["reap_sum_first"])
    print(f"sequential / normal peak: {sequential['peak_rss_mb'] / normal['peak_rss_mb']:.2f}; same statistics: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="also measure peak memory on a >= 2 GB model")
    args = parser.parse_args()
    from harness.standins.zoo import build_model

    with tempfile.TemporaryDirectory(prefix="calib-bench-") as tmp:
        root = Path(tmp)
        model_dir = build_model("qwen3_moe", root / "overhead", overrides=OVERHEAD_MODEL)
        overhead(model_dir, args.samples, args.length, args.batch_size, args.repeats)
        if args.memory:
            memory(root, 8, 128)


if __name__ == "__main__":
    main()
