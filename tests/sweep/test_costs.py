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
            "gpt_oss", "minimax_m2", "glm4_moe_lite",
            "kimi_linear", "nemotron_h"]


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

    for family in ("glm4_moe", "deepseek_v3", "glm4_moe_lite"):
        model = shutil.copytree(zoo_dir / family, tmp_path / family)
        add_mtp_layers(model, 1)
        config = json.loads((model / "config.json").read_text())
        assert from_config(config) == from_headers(model), family


def test_config_layout_of_the_hybrid_attention_families(zoo_dir):
    """Qwen3-Next and Qwen3.5 (Gated DeltaNet and gated full attention, shared-expert gate; Qwen3.5 in its
    multimodal wrapper, whose vision tower is not laid out): key by key against the zoo's headers, with the MTP
    module under `mtp.` laid out exactly when the config declares it (`mtp_num_hidden_layers`, as the hub's do)."""
    for family in ("qwen3_next", "qwen3_5_moe"):
        config = json.loads((zoo_dir / family / "config.json").read_text())
        stored = {k: t for k, t in from_headers(zoo_dir / family).items() if not k.startswith("model.visual.")}
        assert any(k.startswith("mtp.") for k in stored) and any(".linear_attn." in k for k in stored), family
        assert from_config(config) == {k: t for k, t in stored.items() if not k.startswith("mtp.")}, family
        (config.get("text_config") or config)["mtp_num_hidden_layers"] = 1
        assert from_config(config) == stored, family


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


# -- calibration memory: the estimate against the measured peak ------------------------------------------
def _memory_rows(name: str, tmp_path: Path) -> list[dict]:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.costs_memory import rows

    return rows([name], tmp_path)


MEMORY_MODELS = ["qwen3_moe x large bf16", "mixtral x large bf16", "ernie4_5_moe x large bf16",
                 "glm4_moe x large bf16", "glm4_moe_grouped x large bf16", "deepseek_v3 x large bf16",
                 "llama4_text x large bf16", "qwen3_moe x large fp8",
                 "deepseek_v3 x large w4a16"]


def _check_memory(name: str, tmp_path: Path) -> None:
    """Estimated calibration peak host memory within 25 % of the peak a fresh `python -m harness.calibrate` process
    reaches (VmHWM), normal and sequential, on a zoo model scaled so its weights outweigh the runtime."""
    found = _memory_rows(name, tmp_path)
    assert [r["mode"] for r in found] == ["normal", "sequential"]
    print({r["mode"]: (r["measured_bytes"] >> 20, r["estimated_bytes"] >> 20, r["error"]) for r in found})
    for row in found:
        # the weights matter: a copy of them left out of the estimate would fail this
        assert row["compute_bytes"] > 0.25 * row["measured_bytes"], row
        assert abs(row["error"]) <= 0.25, row


@pytest.mark.slow
@pytest.mark.parametrize("name", MEMORY_MODELS)
def test_calibration_memory_estimate_every_family_and_format(name, tmp_path):
    _check_memory(name, tmp_path)


# -- the seed sweeps: tensor parallelism, serving memory, the README table -------------------------------
SEED_SWEEPS = sorted(p for p in (Path(__file__).resolve().parents[2] / "sweeps").glob("*.yaml") if p.stem != "tiny")


def test_tensor_parallel_sizes_of_the_seed_sweeps_split_their_models():
    """vLLM splits attention heads, key/value heads and MLP widths over the GPUs; an FP8 slice must keep whole
    128 x 128 blocks. Qwen3-Coder-480B's 2560-wide experts over 8 GPUs are 320 wide, so its sweep spreads whole
    experts (--enable-expert-parallel), as its model card advises; without that the preflight says so."""
    from harness.sweep.config import SweepConfig, read_sweep_file
    from harness.sweep.costs import seed_model_config
    from harness.sweep.preflight import allowed_tensor_parallel, tensor_parallel_problem

    for path in SEED_SWEEPS:
        model = SweepConfig(**read_sweep_file(path)).models[0]
        config = seed_model_config(model.path)
        tp, extra = model.serving.tensor_parallel_size, model.serving.extra_args
        assert tensor_parallel_problem(config, tp, extra) is None, path.stem
        assert tp in allowed_tensor_parallel(config, extra)
    coder = seed_model_config("Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8")
    assert tensor_parallel_problem(coder, 8, []) == (
        "moe_intermediate_size 2560 / 8 GPUs = 320 is not a multiple of the FP8 weight block 128; add "
        "--enable-expert-parallel to serving.extra_args")
    assert allowed_tensor_parallel(coder, []) == [1, 2, 4]  # 2560 / 4 = 640 = 5 blocks
    mixtral = seed_model_config("mistralai/Mixtral-8x7B-Instruct-v0.1")
    assert tensor_parallel_problem(mixtral, 64, []) == "32 attention heads do not split over 64 GPUs"
    ernie = seed_model_config("baidu/ERNIE-4.5-21B-A3B-PT")
    assert tensor_parallel_problem(ernie, 8, []) == "20 attention heads do not split over 8 GPUs"


def test_serving_and_calibration_preflight_with_gpus(tmp_path, zoo_dir, monkeypatch):
    """With GPUs visible (a faked probe), weights per GPU above the serving memory fraction and a normal-mode
    calibration larger than the GPUs are stopped before any work, naming what to change."""
    import yaml

    import harness.sweep.preflight as preflight
    from harness.sweep.cli import main

    model = zoo_dir / "qwen3_moe"
    shape = ModelShape.from_dir(model)
    body = {"name": "gpus", "models": [{"name": "q", "path": str(model)}],
            "calibration": {"datasets": [{"source": str(Path(__file__).resolve().parents[1] / "fixtures" /
                                                        "calibration" / "code_instruct.jsonl"),
                                          "prompt_field": "instruction", "response_field": "output"}],
                            "samples": 4, "length": 32},
            "methods": ["frequency"], "ratios": [0.5], "tasks": ["toy_math"],
            "work_dir": str(tmp_path / "work"), "results_dir": str(tmp_path / "results")}
    path = tmp_path / "gpus.yaml"
    path.write_text(yaml.safe_dump(body))
    # one GPU whose 0.9 share is just below the weights: serving fails, and calibration (CUDA context) too
    monkeypatch.setattr(preflight, "gpu_memory", lambda: [int(shape.bytes / 0.9) - 1])
    assert main([str(path), "--dry-run", "--no-progress"]) == 2
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        main([str(path), "--dry-run", "--no-progress"])
    text = err.getvalue()
    assert "(q): the baseline's weights take" in text and "the serving memory fraction" in text
    assert "serve on 2 GPUs (tensor_parallel_size: 2)" in text
    assert "calibration in normal mode needs about" in text and "even sequential mode needs about" in text
    # a GPU between the sequential and the normal calibration's needs: sequential mode is suggested
    from harness.sweep.costs import calibration_memory

    need = {mode: calibration_memory(shape, samples=4, length=32, batch_size=8, dtype="float32",
                                     sequential=mode == "sequential", on_gpu=True) for mode in ("normal", "sequential")}
    low = need["sequential"].gpu_total - need["sequential"].hidden_states
    assert low < need["normal"].gpu_total
    monkeypatch.setattr(preflight, "gpu_memory", lambda: [(low + need["normal"].gpu_total) // 2])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main([str(path), "--dry-run", "--no-progress"]) == 2
    text = err.getvalue()
    assert "calibration in normal mode needs about" in text and "set `sequential_calibration: true`" in text
    assert "weights take" not in text
    assert not (tmp_path / "work" / "calibration").exists() or not any((tmp_path / "work" / "calibration").iterdir())
    monkeypatch.setattr(preflight, "gpu_memory", lambda: [80 * 2**30])  # one large GPU: fine
    assert main([str(path), "--dry-run", "--no-progress"]) == 0


def test_dry_run_prints_the_cost_and_time_left(tmp_path, zoo_dir, capsys):
    """The cost section: exact checkpoint bytes, disk, memory, prompts and token bounds, and the time left from the
    store's journal once a stage of the same kind has finished."""
    import yaml

    from harness.sweep.cli import main

    model = zoo_dir / "qwen3_moe"
    body = {"name": "cost", "models": [{"name": "q", "path": str(model)}],
            "calibration": {"datasets": [{"source": str(Path(__file__).resolve().parents[1] / "fixtures" /
                                                        "calibration" / "code_instruct.jsonl"),
                                          "prompt_field": "instruction", "response_field": "output"}],
                            "samples": 4, "length": 32},
            "methods": ["frequency"], "ratios": [0.25, 0.5], "tasks": [{"name": "toy_math", "limit": 7}],
            "generation": {"max_tokens": 11},
            "work_dir": str(tmp_path / "work"), "results_dir": str(tmp_path / "results")}
    path = tmp_path / "cost.yaml"
    path.write_text(yaml.safe_dump(body))
    shape = ModelShape.from_dir(model)
    layers = moe_layer_indices(shape.text_config)
    sizes = {r: checkpoint_cost(shape, nominal_plan(shape.config, layers, r, "prune")).total for r in (0.25, 0.5)}
    assert main([str(path), "--dry-run", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"source {shape.bytes >> 10}" not in out  # human units, with the exact count beside them
    assert f"({shape.bytes} bytes, from its shard headers)" in out
    for ratio, size in sizes.items():
        assert f"({size} bytes;" in out, ratio
    assert "checkpoints still to write" in out and f"({sum(sizes.values())} bytes)" in out
    assert "task toy_math: 7 prompt(s) per variant; at most 77 generated tokens per variant, 231 for the 3" in out
    assert "time left: unknown (no finished job recorded yet)" in out
    # Write the checkpoints: the calibration and a plan are then timed; the evaluations have no record yet.
    assert main([str(path), "--no-progress", "--until", "checkpoint"]) == 0
    capsys.readouterr()
    assert main([str(path), "--dry-run", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "written" in out and "from the plan" in out
    # what is left (three evaluations and the parameter count) has no finished job of its kind: not counted
    assert "time left: about 0.00 h (0 s; mean of finished jobs: calibration " in out
    assert "checkpoint 0 s x 2, plan 0 s x 2; no recorded eval, params job: not counted)" in out


@pytest.mark.slow
def test_readme_seed_cost_table_is_the_generated_one():
    """The README's seed-sweep cost table is printed by scripts/seed_costs.py (the dry run's code), not typed."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "scripts/seed_costs.py", "--check", "README.md"], cwd=repo,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
