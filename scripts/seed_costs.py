"""The README's table of what each seed sweep costs, computed by the dry run's own code (harness.sweep.costs).

    .venv/bin/python scripts/seed_costs.py [--data-dir ../shared/datasets] [--check README.md]

Each `sweeps/*.yaml` but the demo is read as written (schema only: its hub model is not resolved), its model laid
out from `harness/seed_models.yaml` (the real config.json's sizes, stored dtype and quantisation), and costed as
`--dry-run` costs it: checkpoint bytes from the writer's own output plan, calibration memory, serving weights per
GPU at the sweep's tensor parallelism, prompts per task (rows of the offline benchmark copies under --data-dir;
the sweep's own data_dir when it has one). `--check FILE` exits 1 when FILE's table differs from the one computed
(tests/sweep/test_costs.py runs it), so the README is never typed by hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- seed-costs:begin -->", "<!-- seed-costs:end -->"


def _gib(n: float) -> str:
    return f"{n / 2**30:,.0f}" if n >= 10 * 2**30 else f"{n / 2**30:,.1f}"


def sweep_costs(path: Path, data_dir: Path | None):
    """(config, [ModelCost], [TaskCost]) of one seed sweep, every checkpoint still to write."""
    from harness.methods import get_method
    from harness.sweep.config import SweepConfig, expand_task_names, read_sweep_file
    from harness.sweep.costs import ModelShape, model_cost, seed_model_config, task_cost

    raw = read_sweep_file(path)
    if data_dir is not None and not raw.get("data_dir"):
        raw["data_dir"] = str(data_dir)
    cfg = SweepConfig(**raw)
    cfg._base = REPO
    models = []
    for model in cfg.models:
        shape = ModelShape.from_config(seed_model_config(model.path))
        variants = [(f"{m.result_name} {r:g}", get_method(m.name, m.config).kind, r, None, "to write")
                    for m in cfg.methods for r in cfg.ratios]
        models.append(model_cost(cfg, model, shape, variants))
    count = len(cfg.methods) * len(cfg.ratios) + int(cfg.baseline)
    tasks = [task_cost(cfg, spec, cfg.models[0], count) for spec in expand_task_names(cfg.tasks)]
    return cfg, models, tasks


def table(data_dir: Path | None) -> str:
    """The markdown table, one row per seed sweep."""
    rows = ["| sweep | model | stored | weights | checkpoints | each (prune / merge, 25 % · 50 %) | disk, all "
            "checkpoints | calibration peak, normal: GPUs (TP) · host | sequential: one GPU · host | serving "
            "weights per GPU (TP) | prompts per variant | generated tokens per variant, at most |",
            "|---|---|---|---:|---:|---|---:|---|---|---|---:|---:|"]
    for path in sorted(p for p in (REPO / "sweeps").glob("*.yaml") if p.stem != "tiny"):
        cfg, models, tasks = sweep_costs(path, data_dir)
        for m in models:
            quant = m.shape.config.get("quantization_config") or (m.shape.config.get("text_config") or {}).get(
                "quantization_config")
            stored = {"fp8": "FP8 blocks", "compressed-tensors": "int4 (W4A16)", "mxfp4": "MXFP4 experts"}.get(
                (quant or {}).get("quant_method"), m.shape.text_config.get("dtype", "bfloat16"))
            sized = [v for v in m.variants if v.checkpoint is not None]
            by_kind: dict[str, dict[float, int]] = {}
            for v in sized:
                method, ratio = v.label.rsplit(" ", 1)
                kind = "merge" if _is_merge(cfg, method) else "prune"
                by_kind.setdefault(kind, {})[float(ratio)] = v.checkpoint.total
            each = " / ".join(" · ".join(_gib(b) for _, b in sorted(sizes.items())) for _, sizes in
                              sorted(by_kind.items(), reverse=True))
            disk = sum(v.checkpoint.total for v in sized)
            normal, sequential = m.calibration["normal"], m.calibration["sequential"]
            tp = m.tensor_parallel
            serving = m.serving_per_gpu()["baseline"]
            prompts = [t.prompts for t in tasks]
            tokens = [t.tokens_per_variant for t in tasks if t.max_tokens]
            known_prompts = f"{sum(p for p in prompts if p is not None):,}"
            unknown = [t.name for t in tasks if t.prompts is None]
            if unknown:
                known_prompts += f" + {', '.join(unknown)}"
            bound = f"{sum(t for t in tokens if t is not None):,}"
            if any(t is None for t in tokens):
                bound += " + " + ", ".join(t.name for t in tasks if t.max_tokens and t.tokens_per_variant is None)
            rows.append(f"| `{path.relative_to(REPO)}` | {m.name} | {stored} | {_gib(m.source_bytes)} | "
                        f"{len(sized)} | {each} | {_gib(disk)} | {_gib(normal.gpu_total)} ({tp}) · "
                        f"{_gib(normal.host)} | {_gib(sequential.gpu_total)} · {_gib(sequential.host)} | "
                        f"{_gib(serving)} ({tp}) | {known_prompts} | {bound} |")
    return "\n".join(rows) + "\n"


def _is_merge(cfg, label: str) -> bool:
    from harness.methods import get_method

    spec = next(m for m in cfg.methods if m.result_name == label)
    return get_method(spec.name, spec.config).kind == "merge"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets",
                        help="offline benchmark copies whose rows are counted (default ../shared/datasets)")
    parser.add_argument("--check", type=Path, metavar="FILE",
                        help=f"compare with the table between {BEGIN} and {END} in FILE instead of printing")
    args = parser.parse_args(argv)
    data_dir = args.data_dir if args.data_dir and args.data_dir.is_dir() else None
    text = table(data_dir)
    if args.check is None:
        print(text, end="")
        return 0
    page = args.check.read_text()
    if BEGIN not in page or END not in page:
        print(f"{args.check}: no {BEGIN} ... {END} block", file=sys.stderr)
        return 1
    current = page.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"
    if current != text:
        print(f"{args.check}: the seed-cost table is out of date; regenerate it with "
              f"`python scripts/seed_costs.py` and paste it between the markers", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
