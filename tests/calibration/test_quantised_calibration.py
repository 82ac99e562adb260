"""Quantised checkpoints (FP8 blocks as Qwen3-Coder-480B-FP8 ships, compressed-tensors int4 as Kimi-K2 W4A16)
calibrate in normal and sequential mode, and their compressed checkpoints stay quantised.

The reference is independent of harness.checkpoint.quantisation: the weights dequantised by the compressed-tensors
library (int4) or the block formula (FP8), loaded as a plain float model, and the token-by-token brute force
of test_observer on it.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.archs import get_arch
from harness.calibration.data import CalibrationSpec, build_calibration_batch
from harness.calibration.run import calibrate
from harness.checkpoint import write_checkpoint
from harness.checkpoint.quantisation import detect_format
from harness.methods import get_method
from harness.methods.constraints import ExpertConstraints
from tests.calibration.test_observer import brute_force
from tests.checkpoint.test_quantisation import (  # noqa: F401  (quant_zoo is a fixture)
    VARIANTS,
    _config,
    _drop_experts,
    _float_copy,
    _logits,
    _reference_dequantised,
    assert_loaded_equal,
    quant_zoo,
)
from tests.conftest import REPO

FIXTURE = REPO / "tests" / "fixtures" / "calibration" / "code_instruct.jsonl"
RTOL = 1e-6
SPEC = CalibrationSpec(datasets=[{"source": str(FIXTURE), "prompt_field": "instruction", "response_field": "output"}],
                       samples=6, length=48, packing="pad", device="cpu")


@pytest.fixture(scope="module")
def references(quant_zoo, tmp_path_factory):  # noqa: F811
    """Per variant: the independently dequantised float checkpoint."""
    root = tmp_path_factory.mktemp("dequantised")
    return {q: _float_copy(quant_zoo[q], root / q, _reference_dequantised(quant_zoo[q])) for q in VARIANTS}


@pytest.mark.parametrize("sequential", [False, True], ids=["normal", "sequential"])
@pytest.mark.parametrize("quant", list(VARIANTS))
def test_statistics_equal_brute_force_on_the_dequantised_weights(quant_zoo, references, quant, sequential):  # noqa: F811
    source = quant_zoo[quant]
    assert detect_format(source).is_quantised
    stats = calibrate(source, SPEC, extras={"mean_out", "router_similarity"}, sequential=sequential, dtype="float32",
                      batch_size=4, progress=False)
    assert stats.manifest["quantisation"] == detect_format(source).name and stats.manifest["dtype"] == "float32"

    reference = AutoModelForCausalLM.from_pretrained(references[quant], dtype=torch.float32).eval()
    batch = build_calibration_batch(SPEC, AutoTokenizer.from_pretrained(source))
    from transformers import BatchEncoding

    expected = brute_force(reference, get_arch(references[quant]),
                           BatchEncoding({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}))
    assert set(stats.layers) == set(expected)
    for index, ref in expected.items():
        got = stats.layers[index]
        for name in ("count", "gate_sum", "ean_sum", "reap_sum", "max_act", "max_abs_act"):
            torch.testing.assert_close(getattr(got, name), ref[name], rtol=RTOL, atol=1e-9,
                                       msg=lambda m, n=name, i=index: f"{quant} layer {i} {n}: {m}")
        for name in ("mean_out", "router_gram"):
            scale = ref[name].abs().max().item()
            torch.testing.assert_close(getattr(got, name), ref[name], rtol=RTOL, atol=RTOL * scale)


@pytest.mark.parametrize("quant", list(VARIANTS))
def test_reap_half_writes_a_quantised_checkpoint_equal_to_the_dequantised_model_pruned(quant_zoo, references,  # noqa: F811
                                                                                       quant, tmp_path):
    source = quant_zoo[quant]
    stats = calibrate(source, SPEC, sequential=True, dtype="float32", batch_size=3, progress=False)
    plan = get_method("reap").plan(stats, 0.5, ExpertConstraints.from_arch(get_arch(source)))
    info = write_checkpoint(plan, source, tmp_path / "reap", progress=False)
    assert detect_format(info.path) == detect_format(source)
    assert _config(info.path)["quantization_config"] == _config(source)["quantization_config"]

    kept = {i: [g.members[0] for g in layer.groups] for i, layer in plan.layers.items()}
    assert len({tuple(k) for k in kept.values()}) > 1 or len(kept) == 1  # REAP chose per layer
    dequantised = _reference_dequantised(source)
    pruned = {}
    for i, experts in kept.items():  # drop each layer's own experts
        layer = {k: v for k, v in dequantised.items() if k.startswith(f"model.layers.{i}.")}
        pruned.update(_drop_experts(layer, experts))
    pruned.update({k: v for k, v in dequantised.items() if not any(k.startswith(f"model.layers.{i}.") for i in kept)})
    count_key = get_arch(source).expert_count_key
    reference = _float_copy(source, tmp_path / "reference", pruned, **{count_key: len(next(iter(kept.values())))})
    # transformers' own loader dequantises the written checkpoint on this CPU
    assert_loaded_equal(info.path, reference, atol=1e-5)
