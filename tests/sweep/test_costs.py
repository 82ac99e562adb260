"""The cost of a sweep before it runs (issue 26): checkpoint bytes against the bytes the writer writes, tensor
layouts from config.json against the zoo's shard headers, float32, bfloat16 and quantised."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from harness.checkpoint.inventory import from_config, from_headers, moe_layer_indices
from harness.sweep.costs import ModelShape, checkpoint_cost, directory_bytes, nominal_plan

FAMILIES = ["qwen3_moe", "mixtral", "ernie4_5_moe", "glm4_moe", "glm4_moe_grouped", "deepseek_v3", "llama4_text",
            "gpt_oss", "minimax_m2"]


def _bf16_copy(src: Path, out: Path) -> Path:
    """The zoo model stored in bfloat16 (as the seed checkpoints are), float32 correction biases kept."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, out)
    for shard in out.glob("*.safetensors"):
        tensors = load_file(shard)
        save_file({k: v if k.endswith("e_score_correction_bias") or not v.is_floating_point() else
                   v.to(torch.bfloat16) for k, v in tensors.items()}, shard, metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(config))
    index = out / "model.safetensors.index.json"
    index.unlink(missing_ok=True)
    return out


@pytest.fixture(scope="module")
def models(zoo_dir, tmp_path_factory) -> dict[str, Path]:
    """Every zoo family in float32 and bfloat16, and the two quantised formats."""
    from harness.standins.zoo import build_model

    root = tmp_path_factory.mktemp("costs_models")
    found = {f: zoo_dir / f for f in FAMILIES}
    found |= {f"{f}-bf16": _bf16_copy(zoo_dir / f, root / f"{f}-bf16") for f in FAMILIES}
    found["qwen3_moe-fp8"] = build_model("qwen3_moe", root / "qwen3_moe-fp8", quant="fp8")
    found["deepseek_v3-w4a16"] = build_model("deepseek_v3", root / "deepseek_v3-w4a16", quant="w4a16")
    found["gpt_oss-mxfp4"] = build_model("gpt_oss", root / "gpt_oss-mxfp4", quant="mxfp4")
    found["minimax_m2-fp8"] = build_model("minimax_m2", root / "minimax_m2-fp8", quant="fp8")
    return found


def _without_mtp(config: dict) -> dict:
    """The zoo declares an MTP layer in the config but stores none unless add_mtp_layers is called."""
    return {**config, "num_nextn_predict_layers": 0} if "num_nextn_predict_layers" in config else config


def test_config_layout_equals_the_headers_of_every_family(models):
    for name, path in models.items():
        config = json.loads((path / "config.json").read_text())
        expected = from_headers(path)
        laid_out = from_config(_without_mtp(config))
        assert laid_out == expected, (name, sorted(set(laid_out) ^ set(expected))[:5],
                                      [(k, laid_out[k], expected[k]) for k in set(laid_out) & set(expected)
                                       if laid_out[k] != expected[k]][:3])


def test_config_layout_includes_stored_mtp_layers(tmp_path, zoo_dir):
    from harness.standins.zoo import add_mtp_layers

    for family in ("glm4_moe", "deepseek_v3"):
        model = shutil.copytree(zoo_dir / family, tmp_path / family)
        add_mtp_layers(model, 1)
        config = json.loads((model / "config.json").read_text())
        assert from_config(config) == from_headers(model), family


def _random_plan(shape: ModelShape, ratio: float, kind: str, seed: int):
    """A plan of `kind` at `ratio` keeping random experts (group by group), unlike the nominal plan."""
    from harness.archs import get_arch
    from harness.methods.constraints import ExpertConstraints
    from harness.plan import ExpertGroup, LayerPlan, Plan

    arch = get_arch(shape.config)
    constraints = ExpertConstraints.from_arch(arch)
    kept = constraints.target_count(ratio)
    rng = random.Random(seed)
    layers = {}
    for layer in moe_layer_indices(shape.text_config):
        groups = []
        for members in constraints.groups():
            members = list(members)
            rng.shuffle(members)
            per = kept // constraints.n_group
            if kind == "prune":
                groups += [ExpertGroup.single(j) for j in sorted(members[:per])]
            else:
                buckets = [[j] for j in members[:per]]
                for j in members[per:]:
                    rng.choice(buckets).append(j)
                groups += [ExpertGroup(members=b, weights=[1 / len(b)] * len(b)) for b in buckets]
        layers[layer] = LayerPlan(num_experts=arch.num_experts, groups=groups)
    return Plan(method="random", ratio=ratio, kind=kind, layers=layers)


def test_estimated_checkpoint_bytes_equal_written_bytes(models, tmp_path):
    """Estimated (before the plan, from the headers and from config.json alone) vs written, within 1 %."""
    from harness.checkpoint import write_checkpoint

    worst: dict[str, float] = {}
    for name, path in models.items():
        shape = ModelShape.from_dir(path)
        from_cfg = ModelShape.from_config(_without_mtp(shape.config), shape.side_files)
        layers = moe_layer_indices(shape.text_config)
        kinds = ["prune"] if "w4a16" in name else ["prune", "merge"]  # packed int4 experts cannot be merged
        for kind in kinds:
            for ratio in (0.25, 0.5):
                out = tmp_path / f"{name}-{kind}-{ratio}"
                plan = _random_plan(shape, ratio, kind, seed=len(name))
                write_checkpoint(plan, path, out, progress=False)
                written = directory_bytes(out)
                nominal = nominal_plan(shape.config, layers, ratio, kind)
                for estimate in (checkpoint_cost(shape, nominal), checkpoint_cost(from_cfg, nominal)):
                    error = abs(estimate.total - written) / written
                    worst[name] = max(worst.get(name, 0.0), error)
                    assert error < 0.01, (name, kind, ratio, estimate.total, written)
                # With the plan at hand (the disk preflight), the shards are sized to the byte.
                shards = sum(p.stat().st_size for p in out.glob("*.safetensors"))
                assert checkpoint_cost(shape, plan).weights == shards, (name, kind, ratio)
                shutil.rmtree(out)
    print("worst relative error per model:", {k: f"{v:.3%}" for k, v in worst.items()})
