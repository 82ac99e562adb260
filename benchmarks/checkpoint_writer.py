"""Checkpoint writer cost: throughput against a plain copy of the same shards, peak memory against one shard.

    .venv/bin/python benchmarks/checkpoint_writer.py [--shard-mb 300] [--experts 32] [--layers 6]

Builds a scaled-up zoo qwen3_moe (about 1.3 GB in float32 with the defaults), re-shards it
into shards of about --shard-mb, then times, each in a fresh child process whose peak
resident memory (VmHWM) is read at its end:
  copy      shutil.copyfile of every shard (the bar: goal >= 0.5x its bytes/s)
  identity  the 0 % plan
  prune     REAP-like 50 % pruning plan (every other expert)
  merge     50 % merging plan (pairs, frequency-weighted average as in HC-SMoE)
  merge+align  the same pairs with M-SMoE's neuron alignment (one 2-thread linear
            assignment per member: compute, not I/O, bounds this one)
Throughput is bytes written per second relative to the copy's; memory is the peak relative
to the largest shard (goal <= 1.5x), also shown above the interpreter's own footprint
(python + torch + the harness imported, nothing done).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _model_overrides(experts: int, layers: int) -> dict:
    return dict(hidden_size=1024, intermediate_size=1024, moe_intermediate_size=512, num_hidden_layers=layers,
                num_attention_heads=8, num_key_value_heads=2, head_dim=128, num_experts=experts,
                num_experts_per_tok=4)


def reshard(source: Path, out: Path, shard_bytes: int) -> list[Path]:
    """Rewrite a checkpoint into shards of about `shard_bytes`, tensors in key order (one shard in memory)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and not path.name.endswith(".safetensors") and path.name != "model.safetensors.index.json":
            shutil.copy2(path, out / path.name)
    handles = {p: safe_open(str(p), "pt") for p in sorted(source.glob("*.safetensors"))}
    where = {k: p for p, h in handles.items() for k in h.keys()}
    chunks: list[list[str]] = [[]]
    size = 0
    for key in sorted(where, key=lambda k: (k.split(".experts.")[0], k)):
        sl = handles[where[key]].get_slice(key)
        n = 1
        for s in sl.get_shape():
            n *= s
        nbytes = n * 4
        if chunks[-1] and size + nbytes > shard_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(key)
        size += nbytes
    weight_map = {}
    for number, keys in enumerate(chunks, 1):
        name = f"model-{number:05d}-of-{len(chunks):05d}.safetensors"
        save_file({k: handles[where[k]].get_tensor(k) for k in keys}, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, name))
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return sorted(out.glob("*.safetensors"))


def make_plans(num_experts: int, layers: list[int], out_dir: Path) -> dict[str, Path]:
    from harness.plan import ExpertGroup, LayerPlan, Plan

    prune = Plan(method="bench_prune", ratio=0.5, kind="prune", layers={
        i: LayerPlan(num_experts=num_experts, groups=[ExpertGroup.single(j) for j in range(0, num_experts, 2)])
        for i in layers})
    def merge(align: bool) -> Plan:
        return Plan(method="bench_merge", ratio=0.5, kind="merge", layers={i: LayerPlan(
            num_experts=num_experts,
            groups=[ExpertGroup(members=[j, j + 1], weights=[0.6, 0.4], align=align) for j in range(0, num_experts, 2)])
            for i in layers})

    plans = {"identity": Plan.identity(dict.fromkeys(layers, num_experts)), "prune": prune, "merge": merge(False),
             "merge+align": merge(True)}
    return {name: plan.save(out_dir / f"{name}.json") for name, plan in plans.items()}


_CHILD = """
import json, shutil, sys, time
from pathlib import Path
from harness.checkpoint import write_checkpoint
from harness.plan import Plan

def peak_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

task, source, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
started = time.perf_counter()
if task == "copy":
    out.mkdir()
    for shard in sorted(source.glob("*.safetensors")):
        shutil.copyfile(shard, out / shard.name)
elif task != "baseline":
    write_checkpoint(Plan.load(task), source, out, progress=False)
seconds = time.perf_counter() - started
written = sum(p.stat().st_size for p in out.glob("*.safetensors")) if out.exists() else 0
print(json.dumps({"seconds": seconds, "bytes": written, "peak_mb": peak_mb()}))
"""


def run_child(task: str, source: Path, out: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    proc = subprocess.run([sys.executable, "-c", _CHILD, task, str(source), str(out)], cwd=REPO,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shard-mb", type=int, default=300)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2, help="best of N for the times")
    parser.add_argument("--dir", help="work directory (default: a temporary one, removed after)")
    args = parser.parse_args()
    from harness.standins.zoo import build_model

    with tempfile.TemporaryDirectory(prefix="ckpt-bench-", dir=args.dir) as tmp:
        root = Path(tmp)
        built = build_model("qwen3_moe", root / "built", overrides=_model_overrides(args.experts, args.layers))
        shards = reshard(built, root / "source", args.shard_mb << 20)
        shutil.rmtree(built)
        source = root / "source"
        largest = max(p.stat().st_size for p in shards) / 2**20
        total = sum(p.stat().st_size for p in shards) / 2**20
        plans = make_plans(args.experts, list(range(args.layers)), root)
        baseline = run_child("baseline", source, root / "none")["peak_mb"]
        print(f"source: qwen3_moe scaled, {len(shards)} shards, {total:.0f} MB, largest shard {largest:.0f} MB; "
              f"interpreter + imports alone: {baseline:.0f} MB")
        print(f"{'task':11s} {'seconds':>8s} {'MB written':>10s} {'MB/s':>8s} {'vs copy':>8s} {'peak MB':>8s} "
              f"{'/shard':>7s} {'above base':>10s}")
        results = {}
        for task in ["copy", "identity", "prune", "merge", "merge+align"]:
            runs = [run_child("copy" if task == "copy" else str(plans[task]), source, root / "out")
                    for _ in range(args.repeats)]
            best = min(runs, key=lambda r: r["seconds"])
            best["peak_mb"] = max(r["peak_mb"] for r in runs)
            results[task] = best
            rate = best["bytes"] / 2**20 / best["seconds"]
            copy_rate = results["copy"]["bytes"] / 2**20 / results["copy"]["seconds"]
            print(f"{task:11s} {best['seconds']:8.2f} {best['bytes'] / 2**20:10.0f} {rate:8.0f} "
                  f"{rate / copy_rate:7.2f}x {best['peak_mb']:8.0f} {best['peak_mb'] / largest:6.2f}x "
                  f"{(best['peak_mb'] - baseline) / largest:9.2f}x")
        print("goals: writer >= 0.5x copy speed; peak <= 1.5x one shard")


if __name__ == "__main__":
    main()
