"""How much does recording the true routing change the experts REAP, EAN and frequency drop?

For every zoo family and the trained toy model, calibrate once per routing mode on the same
tokens — `model` (what the forward computes: sigmoid scores, correction bias, groups, scaling)
and `reap_repo` (what the paper's public code records: top-k of the raw logits, softmax
weights) — then plan each method at 25 % and 50 % and count, per layer, the experts one mode
drops and the other keeps. On the toy model, both choices are also scored on the toy suite
(in-process, harness.standins.toy.evaluate) where they differ.

    .venv/bin/python scripts/routing_study.py [--out results/routing_study] [--toy-limit 40]

Writes <out>.json and <out>.md (the README's table) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("reap", "ean", "frequency")
RATIOS = (0.25, 0.5)
ROUTINGS = ("model", "reap_repo")
TOY = REPO / "models" / "toy-moe"


def _tokens(tokenizer, per_domain: int):
    from harness.standins.toy.corpus import DOMAINS
    from harness.standins.toy.routing import calibration_batch, domain_texts

    examples = [ex for d in DOMAINS for ex in domain_texts(d, per_domain)]
    return calibration_batch(tokenizer, examples)


def _dropped(plan) -> dict[int, set[int]]:
    return {i: set(range(layer.num_experts)) - {g.members[0] for g in layer.groups} for i, layer in plan.layers.items()}


def study(model_dir: Path, per_domain: int) -> tuple[dict, dict]:
    """Per (method, ratio): experts dropped by one mode and kept by the other, per layer; and the plans."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.archs import get_arch
    from harness.calibration.run import calibrate_loaded
    from harness.calibration.statistics import CalibrationStatistics
    from harness.methods import get_method
    from harness.methods.constraints import ExpertConstraints

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    arch = get_arch(model_dir)
    ids, mask = _tokens(AutoTokenizer.from_pretrained(model_dir), per_domain)
    stats = {r: CalibrationStatistics(calibrate_loaded(model, arch, ids, mask, batch_size=32, routing=r))
             for r in ROUTINGS}
    constraints = ExpertConstraints.from_arch(arch)
    rows, plans = {}, {}
    for method in METHODS:
        for ratio in RATIOS:
            p = {r: get_method(method).plan(stats[r], ratio, constraints) for r in ROUTINGS}
            a, b = _dropped(p["model"]), _dropped(p["reap_repo"])
            per_layer = {i: len(a[i] - b[i]) for i in a}
            rows[f"{method}@{ratio}"] = {"per_layer": per_layer, "total": sum(per_layer.values()),
                                         "dropped": sum(len(v) for v in a.values())}
            plans[(method, ratio)] = p
    return rows, plans


def toy_accuracy(plans: dict, limit: int) -> dict:
    """Toy-suite accuracy of both choices (evaluated once when they are the same experts)."""
    from statistics import fmean

    from harness.checkpoint import write_checkpoint
    from harness.standins.toy.evaluate import evaluate_model

    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for (method, ratio), by_mode in plans.items():
            same = _dropped(by_mode["model"]) == _dropped(by_mode["reap_repo"])
            scores = {}
            for mode in ROUTINGS[:1] if same else ROUTINGS:
                out = write_checkpoint(by_mode[mode], TOY, Path(tmp) / f"{method}-{ratio}-{mode}", progress=False).path
                scores[mode] = fmean(evaluate_model(out, data_dir=TOY / "data", limit=limit).values())
            if same:
                scores["reap_repo"] = scores["model"]
            found[f"{method}@{ratio}"] = {**scores, "same_experts": same}
    return found


def table(results: dict) -> str:
    columns = [f"{m}@{r}" for m in METHODS for r in RATIOS]
    lines = ["| model (family) | experts x MoE layers | " + " | ".join(f"{m} {int(r * 100)} %" for m in METHODS
                                                                          for r in RATIOS) + " |",
             "|---|---|" + "---|" * len(columns)]
    for name, item in results["models"].items():
        cells = []
        for c in columns:
            row = item["differences"][c]
            cells.append(f"{row['total']} / {row['dropped']} ({100 * row['total'] / max(row['dropped'], 1):.0f} %)")
        lines.append(f"| {name} ({item['family']}) | {item['experts']} x {item['moe_layers']} | " + " | ".join(cells)
                     + " |")
    lines.append("")
    lines.append("Cells: experts dropped under one routing mode but kept under the other / experts dropped, "
                 "summed over MoE layers.")
    if results.get("toy_accuracy"):
        lines += ["", "| toy model, mean toy-suite accuracy | " + " | ".join(columns) + " |",
                  "|---|" + "---|" * len(columns)]
        for mode in ROUTINGS:
            lines.append(f"| routing: {mode} | " + " | ".join(f"{results['toy_accuracy'][c][mode]:.3f}"
                                                           for c in columns) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "results" / "routing_study"))
    parser.add_argument("--per-domain", type=int, default=32, help="calibration examples per toy domain")
    parser.add_argument("--toy-limit", type=int, default=40, help="held-out items per domain for the toy suite")
    args = parser.parse_args(argv)

    import torch

    from harness.archs import get_arch
    from harness.standins.zoo import ZOO, build_model

    torch.manual_seed(0)
    torch.set_num_threads(2)
    results: dict = {"models": {}, "calibration": f"{args.per_domain} toy-corpus examples per domain, "
                     "chat-templated, the same tokens for both modes"}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ZOO:
            path = build_model(name, Path(tmp) / name)
            rows, _ = study(path, args.per_domain)
            arch = get_arch(path)
            results["models"][f"zoo {name}"] = {"family": arch.model_type, "experts": arch.num_experts,
                                               "moe_layers": len(next(iter(rows.values()))["per_layer"]),
                                               "differences": rows}
            print(f"{name}: " + ", ".join(f"{k} {v['total']}" for k, v in rows.items()), flush=True)
    rows, plans = study(TOY, args.per_domain)
    arch = get_arch(TOY)
    results["models"]["toy-moe"] = {"family": arch.model_type, "experts": arch.num_experts,
                                    "moe_layers": len(next(iter(rows.values()))["per_layer"]), "differences": rows}
    results["toy_accuracy"] = toy_accuracy(plans, args.toy_limit)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    text = table(results)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
