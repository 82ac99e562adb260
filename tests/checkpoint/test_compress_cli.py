"""`python -m harness.compress`: statistics + method + ratio -> checkpoint, every family x method x ratio."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.archs import get_arch
from harness.calibration.data import CalibrationSpec, build_calibration_batch
from harness.calibration.run import calibrate_loaded
from harness.calibration.statistics import CalibrationStatistics
from harness.checkpoint import write_checkpoint
from harness.compress import CompressError, main
from harness.compress import plan_from_files as make_plan
from harness.methods import get_method, method_names
from harness.methods.constraints import ExpertConstraints, InfeasibleRatioError
from harness.plan import Plan
from harness.standins.zoo import ZOO
from tests.conftest import REPO

FIXTURE = REPO / "tests" / "fixtures" / "calibration" / "code_instruct.jsonl"
METHODS = ["reap", "ean", "frequency", "weighted_frequency", "random", "hc_smoe", "m_smoe", "ream"]
RATIOS = [0.25, 0.5]


def calibrate(model_dir, out_dir, *, extras: bool = True):
    """Statistics of a zoo model on the fixture batch, saved as the CLI expects them."""
    arch = get_arch(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    spec = CalibrationSpec(datasets=[{"source": str(FIXTURE)}], samples=4, length=96)
    batch = build_calibration_batch(spec, AutoTokenizer.from_pretrained(model_dir))
    layers = calibrate_loaded(model, arch, batch.input_ids, batch.attention_mask,
                              extras={"mean_out", "gated_out", "router_similarity"} if extras else ())
    manifest = {"key": f"test-{model_dir.name}-{extras}", "family": arch.model_type, "num_experts": arch.num_experts}
    CalibrationStatistics(layers, manifest).save(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def stats_dirs(zoo_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    return {family: calibrate(zoo_dir / family, root / family) for family in ZOO}


def test_every_method_is_covered():
    assert sorted(METHODS) == method_names()


def test_cli_writes_the_checkpoint_and_its_plan(zoo_dir, stats_dirs, tmp_path):
    out = tmp_path / "qwen-reap"
    proc = subprocess.run([sys.executable, "-m", "harness.compress", "--stats", str(stats_dirs["qwen3_moe"]),
                           "--method", "reap", "--ratio", "0.5", "--model", str(zoo_dir / "qwen3_moe"),
                           "--out", str(out), "--method-config", '{"protect_super_experts": true}'],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "checkpoint:" in proc.stdout and "parameters:" in proc.stdout
    stats = CalibrationStatistics.load(stats_dirs["qwen3_moe"])
    config = json.loads((zoo_dir / "qwen3_moe" / "config.json").read_text())
    expected = get_method("reap", {"protect_super_experts": True}).plan(
        stats, 0.5, ExpertConstraints.from_config(config), calibration_key=stats.manifest["key"])
    assert Plan.load(out / "plan.json") == expected
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["calibration_key"] == stats.manifest["key"] and recipe["plan_hash"] == expected.plan_hash()
    assert recipe["method_config"]["protect_super_experts"] is True
    assert json.loads((out / "config.json").read_text())["num_experts"] == 4


@pytest.mark.parametrize("args, message", [
    (["--method", "nope", "--ratio", "0.5"], "unknown method 'nope'"),
    (["--method", "reap", "--ratio", "0.5", "--method-config", "{bad"], "not valid JSON"),
    (["--method", "reap", "--ratio", "0.5", "--method-config", '{"colour": 1}'], "colour"),
    (["--method", "reap", "--ratio", "1.5"], "ratio must be a fraction"),
    (["--method", "frequency", "--ratio", "0.9"], "Feasible kept counts"),
])
def test_bad_requests_fail_before_writing(zoo_dir, stats_dirs, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    family = "glm4_moe_grouped"
    code = main(["--stats", str(stats_dirs[family]), "--model", str(zoo_dir / family), "--out", str(out), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_missing_statistic_and_mismatched_model_fail_before_writing(zoo_dir, stats_dirs, tmp_path, capsys):
    plain = calibrate(zoo_dir / "mixtral", tmp_path / "plain-stats", extras=False)
    out = tmp_path / "out"
    code = main(["--stats", str(plain), "--method", "hc_smoe", "--ratio", "0.5", "--model", str(zoo_dir / "mixtral"),
                 "--out", str(out)])
    assert code == 2 and "mean_out" in capsys.readouterr().err
    code = main(["--stats", str(stats_dirs["qwen3_moe"]), "--method", "reap", "--ratio", "0.5",
                 "--model", str(zoo_dir / "mixtral"), "--out", str(out)])
    assert code == 2 and "qwen3_moe" in capsys.readouterr().err
    code = main(["--stats", str(tmp_path), "--method", "reap", "--ratio", "0.5", "--model", str(zoo_dir / "mixtral"),
                 "--out", str(out)])
    assert code == 2 and "calibration-statistics directory" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("family", list(ZOO))
def test_every_method_and_ratio_loads_in_transformers_and_answers(zoo_dir, stats_dirs, tmp_path, family):
    """The family x method x ratio matrix: each compressed checkpoint loads and generates, or fails clearly."""
    source = zoo_dir / family
    arch = get_arch(source)
    constraints = ExpertConstraints.from_arch(arch)
    tokenizer = AutoTokenizer.from_pretrained(source)
    prompt = tokenizer(["def add(a, b):"], return_tensors="pt")
    for method in METHODS:
        for ratio in RATIOS:
            try:
                constraints.target_count(ratio)
                feasible = True
            except InfeasibleRatioError:
                feasible = False
            if not feasible:
                with pytest.raises(CompressError, match="infeasible"):
                    make_plan(stats_dirs[family], method, ratio, source)
                continue
            plan = make_plan(stats_dirs[family], method, ratio, source)
            info = write_checkpoint(plan, source, tmp_path / f"{method}-{ratio}", progress=False)
            model = AutoModelForCausalLM.from_pretrained(info.path, dtype=torch.float32).eval()
            slots = plan.num_groups if plan.kind == "prune" else arch.num_experts
            assert get_arch(info.path).config[arch.expert_count_key] == slots
            with torch.no_grad():
                answer = model.generate(**prompt, max_new_tokens=3, do_sample=False)
            assert answer.shape[1] == prompt.input_ids.shape[1] + 3, (method, ratio)
            # Distinct experts: one per group, except that a layer's zero experts (clusters never routed) are
            # identical tensors, counted once.
            distinct = sum(sum(not g.is_zero for g in lp.groups) + any(g.is_zero for g in lp.groups)
                           for lp in plan.layers.values())
            assert info.recipe["routed_experts"] == distinct, (method, ratio)
            assert plan.total_groups == constraints.target_count(ratio) * len(plan.layers), (method, ratio)
            assert info.total_params < info.recipe["source"]["total_params"], (method, ratio)
