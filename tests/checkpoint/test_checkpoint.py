"""The checkpoint writer, checked against the source model: its logits, its tensors, brute-force counts."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.archs import get_arch
from harness.calibration.data import CalibrationSpec, build_calibration_batch
from harness.calibration.run import calibrate_loaded
from harness.checkpoint import CheckpointError, count_parameters, write_checkpoint
from harness.plan import ExpertGroup, LayerPlan, Plan
from harness.standins.zoo import ZOO
from tests.conftest import REPO

FIXTURE = REPO / "tests" / "fixtures" / "calibration" / "code_instruct.jsonl"
ROUTED = ("experts.gate_up_proj", "experts.down_proj", "experts.gate_up_proj_bias", "experts.down_proj_bias",
          "experts.up_proj")  # Nemotron-H's ungated experts: up_proj [E, I, H]
ROUTERS = (".mlp.gate.weight", ".feed_forward.router.weight", ".mlp.router.weight", ".mlp.router.bias",
           ".mixer.gate.weight")


# -- helpers ------------------------------------------------------------------------------------------
def _load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _batch(path):
    spec = CalibrationSpec(datasets=[{"source": str(FIXTURE)}], samples=4, length=96)
    return build_calibration_batch(spec, AutoTokenizer.from_pretrained(path))


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def _moe_layers(model, arch):
    return [layer.index for layer in arch.moe_layers(model)]


def _all_tensors(path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(str(file)))
    return out


def _prune_plan(layers, num_experts, kept):
    return Plan(method="test", ratio=1 - len(kept) / num_experts, kind="prune",
                layers={i: LayerPlan(num_experts=num_experts, groups=[ExpertGroup.single(j) for j in kept])
                        for i in layers})


def _outside_causal_lm(model_dir) -> int:
    """Parameters a multimodal wrapper's checkpoint holds beyond its causal LM (the vision tower), counted on
    the whole multimodal model transformers builds from it; 0 for a plain causal-LM checkpoint."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    if "text_config" not in config or "vision_config" not in config:
        return 0
    from transformers import AutoModelForImageTextToText

    full = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    return sum(t.numel() for k, t in full.state_dict().items() if ".visual." in f".{k}")


def _brute_counts(model, top_k: int, distinct_removed: int = 0) -> tuple[int, int]:
    """From the loaded model: every state tensor, minus `distinct_removed` duplicate experts per MoE layer
    (plus a multimodal checkpoint's vision tower, which the causal LM does not load)."""
    state = model.state_dict()
    extra = _outside_causal_lm(model.name_or_path)
    total = sum(t.numel() for t in state.values()) + extra
    routed = {k: t for k, t in state.items() if k.endswith(ROUTED)}
    per_layer: dict[str, int] = {}
    for key, t in routed.items():
        layer = key.rsplit(".experts.", 1)[0]
        per_layer[layer] = per_layer.get(layer, 0) + t[0].numel()
    total -= distinct_removed * sum(per_layer.values())
    activated = sum(t.numel() for k, t in state.items() if k not in routed) + top_k * sum(per_layer.values())
    return total, activated + extra


def _expected_pruned_state(source_state, kept):
    """What the pruned model must hold, derived from the source model's own tensors."""
    out = {}
    for key, t in source_state.items():
        if key.endswith(ROUTED) or key.endswith(ROUTERS):
            t = t[kept]
        elif key.endswith("e_score_correction_bias"):
            t = t[..., kept]
        out[key] = t
    return out


def _hub_block(arch):
    return arch.hub_block_attr or arch.block_attr


def _modify_source(zoo_dir, family, tmp_path, edit) -> Path:
    """A copy of a zoo model whose hub tensors were changed by `edit(tensors, arch)`."""
    path = tmp_path / f"{family}-source"
    shutil.copytree(zoo_dir / family, path)
    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors, get_arch(path))
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


# -- the 0 % plan ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(ZOO))
def test_identity_plan_reproduces_the_source(zoo_dir, family, tmp_path):
    source = zoo_dir / family
    model, arch = _load(source), get_arch(source)
    plan = Plan.identity({i: arch.num_experts for i in _moe_layers(model, arch)})
    info = write_checkpoint(plan, source, tmp_path / "out", progress=False)
    out = info.path
    batch = _batch(source)
    assert torch.equal(_logits(_load(out), batch), _logits(model, batch))

    # The shards, read by the safetensors library, hold exactly the source tensors; the index lists them.
    # Modules the model never runs (Qwen3-Next's `mtp.`) are left out, and listed as such.
    written, original = _all_tensors(out), _all_tensors(source)
    dropped = {k for k in original if arch.extra_module_prefixes and k.startswith(arch.extra_module_prefixes)}
    assert set(info.recipe["dropped_tensors"]) == dropped
    assert written.keys() == original.keys() - dropped
    assert all(torch.equal(written[k], original[k]) for k in written)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(written)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in written.values())
    assert json.loads((out / "config.json").read_text()) == json.loads((source / "config.json").read_text())
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (source / name).read_bytes()

    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["plan_hash"] == plan.plan_hash() and recipe["ratio"] == 0.0 and recipe["method"] == "identity"
    assert recipe["harness_version"] and recipe["materialisation"] == "pruned"
    assert Plan.load(out / "plan.json") == plan
    expected = _brute_counts(model, arch.top_k)
    assert count_parameters(out) == expected == (info.total_params, info.activated_params)
    assert (recipe["total_params"], recipe["activated_params"]) == expected
    assert (recipe["source"]["total_params"], recipe["source"]["activated_params"]) == expected


# -- pruning never-selected experts ------------------------------------------------------------------------
def _never_selected(zoo_dir, family, tmp_path):
    """(source dir, experts to prune per layer, how they came to be unused).

    Uses experts that the calibration batch never routes to when every layer (every router
    group) has one; otherwise plants them: a very negative weight on the router row's
    constant input channel (the zoo's embeddings keep channel 0 at 1, so the router input's
    channel 0 stays near 1), so their router logit is about -40 on every token, plus a very
    negative correction bias where the family has one.

    A very negative correction bias alone would not do for ERNIE: it selects by softmax
    probability + bias, and the softmax runs over all experts, so removing an unselected
    expert that still holds probability mass rescales the others' probabilities against
    their biases and can change which experts are selected.
    """
    source = zoo_dir / family
    arch = get_arch(source)
    model = _load(source)
    batch = _batch(source)
    stats = calibrate_loaded(model, arch, batch.input_ids, batch.attention_mask)
    groups, size = arch.n_group, arch.num_experts // arch.n_group
    natural = {}
    for i, s in stats.items():
        zero = [j for j in range(arch.num_experts) if s.count[j] == 0]
        per_group = [next((j for j in zero if j // size == g), None) for g in range(groups)]
        natural[i] = per_group
    if all(None not in v for v in natural.values()):
        return source, natural, "natural"
    planted = {i: [g * size + (1 + i) % size for g in range(groups)] for i in stats}
    block, router = _hub_block(arch), arch.router_attr

    def edit(tensors, arch):
        for i, experts in planted.items():
            tensors[f"{arch.layer_prefix(i)}{block}.{router}.weight"][experts, 0] = -50.0
            if arch.correction_bias_key:  # selection adds the bias; a near-zero score alone may still win
                tensors[f"{arch.layer_prefix(i)}{arch.correction_bias_key}"][..., experts] = -50.0

    return _modify_source(zoo_dir, family, tmp_path, edit), planted, "planted"


@pytest.mark.parametrize("family", list(ZOO))
def test_pruning_never_selected_experts_keeps_the_logits(zoo_dir, family, tmp_path):
    source, unused, how = _never_selected(zoo_dir, family, tmp_path)
    arch = get_arch(source)
    model = _load(source)
    batch = _batch(source)
    stats = calibrate_loaded(model, arch, batch.input_ids, batch.attention_mask)
    for i, experts in unused.items():
        assert all(stats[i].count[j] == 0 for j in experts), f"{how} experts {experts} of layer {i} were selected"
    # Every layer prunes as many; a single plan cannot keep different experts counts, so
    # the kept lists differ per layer.
    layers = {i: LayerPlan(num_experts=arch.num_experts,
                           groups=[ExpertGroup.single(j) for j in range(arch.num_experts) if j not in experts])
              for i, experts in unused.items()}
    plan = Plan(method="never_selected", ratio=len(next(iter(unused.values()))) / arch.num_experts, kind="prune",
                layers=layers)
    out = write_checkpoint(plan, source, tmp_path / "out", progress=False).path
    pruned = _load(out)
    assert get_arch(out).config[arch.expert_count_key] == plan.num_groups
    before, after = _logits(model, batch), _logits(pruned, batch)
    real = batch.attention_mask.bool()
    assert torch.allclose(after[real], before[real], atol=1e-5, rtol=0), (after - before)[real].abs().max()
    print(f"\n{family}: pruned {how} never-selected experts {unused}")


# -- pruning: tensors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(ZOO))
def test_pruning_slices_every_per_expert_tensor(zoo_dir, family, tmp_path):
    source = zoo_dir / family
    model, arch = _load(source), get_arch(source)
    size = arch.num_experts // arch.n_group
    kept = [j for j in range(arch.num_experts) if (j % size) in (0, 2, size - 1)]
    plan = _prune_plan(_moe_layers(model, arch), arch.num_experts, kept)
    info = write_checkpoint(plan, source, tmp_path / "out", progress=False)
    pruned = _load(info.path)
    expected = _expected_pruned_state(model.state_dict(), kept)
    got = pruned.state_dict()
    assert got.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(got[key], tensor), key
    assert get_arch(info.path).config[arch.expert_count_key] == len(kept)
    assert count_parameters(info.path) == _brute_counts(pruned, arch.top_k) == (info.total_params,
                                                                                info.activated_params)
    with torch.no_grad():
        answer = pruned.generate(**AutoTokenizer.from_pretrained(info.path)(["Hello"], return_tensors="pt"),
                                 max_new_tokens=3, do_sample=False)
    assert answer.shape[1] > 1


# -- merging --------------------------------------------------------------------------------------------------
def _plant_copies(zoo_dir, family, tmp_path, perm):
    """Source where, in every MoE layer, expert 3 is expert 1 with shuffled neurons and expert 5 equals expert 4."""

    def edit(tensors, arch):
        block = _hub_block(arch)
        layers = sorted({int(k.split(f".{block}.experts.")[0].rsplit(".", 1)[1]) for k in tensors
                         if f".{block}.experts." in k})
        for i in layers:
            p = f"{arch.layer_prefix(i)}{block}.experts."
            if p + "gate_up_proj_bias" in tensors:  # gpt-oss: gate and up columns interleaved, biased
                gu, down = tensors[p + "gate_up_proj"], tensors[p + "down_proj"]  # [E, H, 2I], [E, I, H]
                gu_bias, down_bias = tensors[p + "gate_up_proj_bias"], tensors[p + "down_proj_bias"]
                for half in (0, 1):
                    gu[3][:, half::2] = gu[1][:, half::2][:, perm]
                    gu_bias[3][half::2] = gu_bias[1][half::2][perm]
                down[3], down_bias[3] = down[1][perm], down_bias[1]
                for t in (gu, down, gu_bias, down_bias):
                    t[5] = t[4].clone()
                continue
            if arch.hub_fused_expert_names:  # rows oriented as the adapter's split/join say
                names = arch.hub_fused_expert_names
                gu, down = tensors[p + names["gate_up"]], tensors[p + names["down"]]
                one = arch.split_fused_expert(gu[1], down[1])
                gu[3], down[3] = arch.join_fused_expert(type(one)(gate=one.gate[perm], up=one.up[perm],
                                                                  down=one.down[:, perm]))
                gu[5], down[5] = gu[4].clone(), down[4].clone()
                continue
            names = arch.hub_expert_names
            for role, proj in names.items():
                w = tensors[f"{p}1.{proj}.weight"]
                tensors[f"{p}3.{proj}.weight"] = (w[:, perm] if role == "down" else w[perm]).clone()
                tensors[f"{p}5.{proj}.weight"] = tensors[f"{p}4.{proj}.weight"].clone()

    return _modify_source(zoo_dir, family, tmp_path, edit)


def _merge_plan(layers, num_experts, groups):
    covered = {j for g in groups for j in g.members}
    full = groups + [ExpertGroup.single(j) for j in range(num_experts) if j not in covered]
    full.sort(key=lambda g: g.members[0])
    return Plan(method="test_merge", ratio=1 - len(full) / num_experts, kind="merge",
                layers={i: LayerPlan(num_experts=num_experts, groups=full) for i in layers})


@pytest.mark.parametrize("family", list(ZOO))
def test_merging_copies_keeps_logits_and_shares_slots(zoo_dir, family, tmp_path):
    arch = get_arch(zoo_dir / family)
    inter = arch.config.get("moe_intermediate_size") or arch.config["intermediate_size"]
    perm = torch.randperm(inter, generator=torch.Generator().manual_seed(0))
    source = _plant_copies(zoo_dir, family, tmp_path, perm)
    model = _load(source)
    layers = _moe_layers(model, arch)
    groups = [ExpertGroup(members=[1, 3], weights=[0.4, 0.6], align=True),
              ExpertGroup(members=[4, 5], weights=[0.3, 0.7]),
              ExpertGroup(members=[0, 2], weights=[0.25, 0.75])]
    plan = _merge_plan(layers, arch.num_experts, groups)
    info = write_checkpoint(plan, source, tmp_path / "out", progress=False)
    merged = _load(info.path)
    state, src_state = merged.state_dict(), model.state_dict()
    for key, tensor in src_state.items():
        if not key.endswith(ROUTED):
            assert torch.equal(state[key], tensor), key  # routers and everything else untouched
            continue
        got = state[key]
        assert got.shape == tensor.shape  # shared slots: every slot kept
        for j in (6, 7):
            assert torch.equal(got[j], tensor[j])
        assert torch.equal(got[1], got[3]) and torch.equal(got[4], got[5]) and torch.equal(got[0], got[2])
        assert torch.allclose(got[4], tensor[4], atol=1e-6)
        assert torch.allclose(got[0], (0.25 * tensor[0].double() + 0.75 * tensor[2].double()).float(), atol=1e-6)
    # Members that compute the same function merge into that function: the logits stay.
    # Group [0, 2] really changes the model, so compare with a plan without it.
    plan_same = _merge_plan(layers, arch.num_experts, groups[:2])
    same = _load(write_checkpoint(plan_same, source, tmp_path / "same", progress=False).path)
    batch = _batch(source)
    assert torch.allclose(_logits(same, batch), _logits(model, batch), atol=1e-4)
    assert not torch.allclose(_logits(merged, batch), _logits(model, batch), atol=1e-4)

    recipe = info.recipe
    assert recipe["materialisation"] == "shared_slots" and recipe["kind"] == "merge"
    assert recipe["experts_per_layer"] == {"source": arch.num_experts, "router_slots": arch.num_experts,
                                           "distinct": arch.num_experts - 3,
                                           "distinct_total": (arch.num_experts - 3) * len(layers)}
    assert get_arch(info.path).config[arch.expert_count_key] == arch.num_experts
    assert count_parameters(info.path) == _brute_counts(merged, arch.top_k, distinct_removed=3)


def _unique_counts(model) -> tuple[int, int]:
    """(total, distinct experts) from the loaded model by brute force: every state tensor, each MoE layer's
    routed experts counted once per group of experts whose tensors are all equal."""
    state = model.state_dict()
    total = sum(t.numel() for k, t in state.items() if not k.endswith(ROUTED))
    layers: dict[str, list[torch.Tensor]] = {}
    for key, t in state.items():
        if key.endswith(ROUTED):
            layers.setdefault(key.rsplit(".experts.", 1)[0], []).append(t)
    distinct = 0
    for tensors in layers.values():
        unique: list[int] = []
        for j in range(tensors[0].shape[0]):
            if not any(all(torch.equal(t[j], t[u]) for t in tensors) for u in unique):
                unique.append(j)
        distinct += len(unique)
        total += len(unique) * sum(t[0].numel() for t in tensors)
    return total, distinct


@pytest.mark.parametrize("family", ["qwen3_moe", "llama4_text", "glm4_moe_grouped"])
def test_non_uniform_merge_with_zero_experts(zoo_dir, family, tmp_path):
    """Layers with different group counts (M-SMoE's global dominance) and all-zero-weight groups (clusters
    never routed, merged as the reference code does): every slot kept, zero experts written as zeros,
    parameter counts equal to a brute-force count of unique tensors."""
    source = zoo_dir / family
    arch = get_arch(source)
    model = _load(source)
    layers = _moe_layers(model, arch)
    e = arch.num_experts
    patterns = [
        [ExpertGroup(members=[0, 1], weights=[0.5, 0.5]), ExpertGroup(members=[2, 3], weights=[0.0, 0.0])],
        [ExpertGroup(members=[0, 1, 2, 3], weights=[0.4, 0.3, 0.2, 0.1]),
         ExpertGroup(members=[4, 5], weights=[0.0, 0.0]), ExpertGroup(members=[6, 7], weights=[0.0, 0.0])],
        [],
    ]
    plan = Plan(method="test_merge", ratio=0.5, kind="merge", layers={
        i: _merge_plan([i], e, patterns[n % len(patterns)]).layers[i] for n, i in enumerate(layers)})
    assert not plan.uniform
    info = write_checkpoint(plan, source, tmp_path / "out", progress=False)
    merged = _load(info.path)
    state, src_state = merged.state_dict(), model.state_dict()
    first, second = layers[0], layers[1]
    for key in (k for k in state if k.endswith(ROUTED)):
        got, src = state[key], src_state[key]
        if f"layers.{first}." in key:
            assert torch.allclose(got[0], (0.5 * src[0].double() + 0.5 * src[1].double()).float(), atol=1e-6)
            assert not got[2].any() and not got[3].any()
            assert torch.equal(got[4:], src[4:])
        if f"layers.{second}." in key:
            assert not got[4:8].any()
            assert torch.equal(got[8:], src[8:])
    assert get_arch(info.path).config[arch.expert_count_key] == e
    per_layer = {str(i): len(lp.groups) for i, lp in plan.layers.items()}
    assert info.recipe["experts_per_layer"] == {"source": e, "router_slots": e, "distinct": per_layer,
                                                "distinct_total": plan.total_groups}
    total, distinct = _unique_counts(merged)
    # The two zero experts of a layer are the same tensors: counted once.
    assert distinct == plan.total_groups - sum(1 for n, _ in enumerate(layers) if n % 3 == 1)
    assert (info.total_params, info.recipe["routed_experts"]) == (total, distinct)
    assert count_parameters(info.path)[0] == total
    assert torch.isfinite(_logits(merged, _batch(source))).all()


# -- quantised checkpoints ---------------------------------------------------------------------------------------
def _quantise_fp8_blocks(w: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference block quantiser (loops over blocks), independent of harness.checkpoint.quantisation."""
    rows, cols = w.shape
    scale = torch.empty(-(-rows // block), -(-cols // block))
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for r in range(scale.shape[0]):
        for c in range(scale.shape[1]):
            part = w[r * block:(r + 1) * block, c * block:(c + 1) * block]
            scale[r, c] = part.abs().max() / 448.0
            q[r * block:(r + 1) * block, c * block:(c + 1) * block] = (part / scale[r, c]).to(torch.float8_e4m3fn)
    return q, scale


def _dequant(q, scale, block):
    return q.float() * scale.repeat_interleave(block, 0)[:q.shape[0]].repeat_interleave(block, 1)[:, :q.shape[1]]


def _pack_int4(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """compressed-tensors pack-quantized layout: symmetric int4 per group, eight values per int32."""
    rows, cols = w.shape
    scale = w.reshape(rows, cols // group, group).abs().amax(-1) / 7.0
    q = torch.round(w / scale.repeat_interleave(group, 1)).clamp(-8, 7).to(torch.int64) & 0xF
    packed = torch.zeros(rows, cols // 8, dtype=torch.int64)
    for k in range(8):
        packed |= q[:, k::8] << (4 * k)
    packed = torch.where(packed >= 2 ** 31, packed - 2 ** 32, packed).to(torch.int32)
    return packed, scale.to(torch.bfloat16)


def _quantised_source(zoo_dir, tmp_path, fmt: str, scale_name: str = "weight_scale_inv") -> Path:
    family = "qwen3_moe"
    block = 32

    def edit(tensors, arch):
        for key in [k for k in tensors if ".mlp.experts." in k and k.endswith(".weight")]:
            stem = key[: -len(".weight")]
            w = tensors.pop(key)
            if fmt == "fp8":
                tensors[key], tensors[f"{stem}.{scale_name}"] = _quantise_fp8_blocks(w, block)
            else:
                tensors[f"{stem}.weight_packed"], tensors[f"{stem}.weight_scale"] = _pack_int4(w, block)
                tensors[f"{stem}.weight_shape"] = torch.tensor(list(w.shape), dtype=torch.int64)

    path = _modify_source(zoo_dir, family, tmp_path, edit)
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = (
        {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [block, block]}
        if fmt == "fp8" else
        {"quant_method": "compressed-tensors", "format": "pack-quantized",
         "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
             "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": block}}},
         "ignore": ["lm_head", "re:.*mlp.gate$"]})
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


@pytest.mark.parametrize("fmt", ["fp8", "int4"])
def test_pruning_a_quantised_checkpoint_moves_scales_with_their_experts(zoo_dir, tmp_path, fmt):
    source = _quantised_source(zoo_dir, tmp_path, fmt)
    arch = get_arch(source)
    kept = [0, 2, 5, 7]
    plan = _prune_plan([0, 1, 2], arch.num_experts, kept)
    info = write_checkpoint(plan, source, tmp_path / "out", progress=False)
    src, out = _all_tensors(source), _all_tensors(info.path)
    expert_keys = [k for k in src if ".mlp.experts." in k]
    assert len([k for k in out if ".mlp.experts." in k]) == len(expert_keys) * len(kept) // arch.num_experts
    for key in expert_keys:
        head, tail = key.split(".mlp.experts.")
        j, rest = tail.split(".", 1)
        if int(j) in kept:
            new = f"{head}.mlp.experts.{kept.index(int(j))}.{rest}"
            assert out[new].dtype == src[key].dtype and torch.equal(out[new].view(torch.uint8),
                                                                    src[key].view(torch.uint8)), key
    for i in range(3):
        assert torch.equal(out[f"model.layers.{i}.mlp.gate.weight"], src[f"model.layers.{i}.mlp.gate.weight"][kept])
    # Logical parameters: the same as pruning the unquantised model.
    plain = write_checkpoint(plan, zoo_dir / "qwen3_moe", tmp_path / "plain", progress=False)
    assert count_parameters(info.path) == (plain.total_params, plain.activated_params)
    assert json.loads((info.path / "config.json").read_text())["quantization_config"]["quant_method"]
    assert info.recipe["quantisation"] == ("fp8" if fmt == "fp8" else "packed-int (compressed-tensors)")


@pytest.mark.parametrize("scale_name", ["weight_scale_inv", "weight_scale"])
def test_merging_fp8_dequantises_merges_and_requantises(zoo_dir, tmp_path, scale_name):
    source = _quantised_source(zoo_dir, tmp_path, "fp8", scale_name)
    arch = get_arch(source)
    plan = _merge_plan([0, 1, 2], arch.num_experts, [ExpertGroup(members=[0, 1], weights=[0.25, 0.75]),
                                                     ExpertGroup(members=[4, 2, 6], weights=[0.5, 0.3, 0.2],
                                                                 align=True)])
    info = write_checkpoint(plan, source, tmp_path / "out", progress=False)
    src, out = _all_tensors(source), _all_tensors(info.path)
    for i in range(3):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            def key(j, name, i=i, proj=proj):
                return f"model.layers.{i}.mlp.experts.{j}.{proj}.{name}"

            deq = {j: _dequant(src[key(j, "weight")], src[key(j, scale_name)], 32) for j in range(8)}
            merged = _dequant(out[key(0, "weight")], out[key(0, scale_name)], 32)
            reference = 0.25 * deq[0] + 0.75 * deq[1]
            block_scale = out[key(0, scale_name)].repeat_interleave(32, 0).repeat_interleave(32, 1)
            assert ((merged - reference).abs() <= reference.abs() * 2 ** -4 + block_scale * 2 ** -9 + 1e-7).all()
            assert out[key(0, "weight")].dtype == torch.float8_e4m3fn
            for name in ("weight", scale_name):
                assert torch.equal(out[key(0, name)].view(torch.uint8), out[key(1, name)].view(torch.uint8))
                assert torch.equal(out[key(2, name)].view(torch.uint8), out[key(6, name)].view(torch.uint8))
                for j in (3, 5, 7):  # singletons: the source bytes
                    assert torch.equal(out[key(j, name)].view(torch.uint8), src[key(j, name)].view(torch.uint8))
    assert info.recipe["experts_per_layer"]["distinct"] == 5
    assert count_parameters(info.path)[0] == count_parameters(source)[0] - 3 * 3 * 3 * 64 * 128


def test_merging_packed_int4_fails_clearly_before_writing(zoo_dir, tmp_path):
    source = _quantised_source(zoo_dir, tmp_path, "int4")
    plan = _merge_plan([0, 1, 2], 8, [ExpertGroup(members=[0, 1], weights=[0.5, 0.5])])
    with pytest.raises(CheckpointError, match="packed int4"):
        write_checkpoint(plan, source, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


# -- sharded sources, atomic writes, plan checks -----------------------------------------------------------
def _sharded_copy(zoo_dir, family, tmp_path, parts=3) -> Path:
    path = tmp_path / f"{family}-sharded"
    shutil.copytree(zoo_dir / family, path)
    tensors = load_file(str(path / "model.safetensors"))
    (path / "model.safetensors").unlink()
    keys = sorted(tensors)
    weight_map = {}
    for n in range(parts):
        name = f"model-{n + 1:05d}-of-{parts:05d}.safetensors"
        chunk = {k: tensors[k] for k in keys[n::parts]}
        save_file(chunk, str(path / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(chunk, name))
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


def test_sharded_source_gives_sharded_output(zoo_dir, tmp_path):
    source = _sharded_copy(zoo_dir, "llama4_text", tmp_path)
    model, arch = _load(source), get_arch(source)
    kept = [1, 2, 4, 6]
    info = write_checkpoint(_prune_plan(_moe_layers(model, arch), 8, kept), source, tmp_path / "out", progress=False)
    shards = sorted(p.name for p in info.path.glob("*.safetensors"))
    assert shards == [f"model-0000{n}-of-00003.safetensors" for n in (1, 2, 3)]
    index = json.loads((info.path / "model.safetensors.index.json").read_text())["weight_map"]
    for shard in shards:
        assert set(load_file(str(info.path / shard))) == {k for k, v in index.items() if v == shard}
    got = _load(info.path).state_dict()
    for key, tensor in _expected_pruned_state(model.state_dict(), kept).items():
        assert torch.equal(got[key], tensor), key


_KILL_SCRIPT = """
import os, signal, sys
import harness.checkpoint.shard_writer as shard_writer
from harness.checkpoint import write_checkpoint
from harness.plan import Plan
original = shard_writer._write_shard
def write_then_die(*args, **kwargs):
    original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
shard_writer._write_shard = write_then_die
plan = Plan.identity({i: 8 for i in (0, 1, 2)})
write_checkpoint(plan, sys.argv[1], sys.argv[2], progress=False)
"""


def test_a_killed_write_leaves_nothing_at_out(zoo_dir, tmp_path):
    source = _sharded_copy(zoo_dir, "qwen3_moe", tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(source), str(out)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not out.exists()
    partial = list(tmp_path.glob(".out.tmp-*"))
    assert partial and list(partial[0].glob("*.safetensors")), "the write should have started"


def test_a_failed_write_cleans_up_and_existing_output_is_kept(zoo_dir, tmp_path, monkeypatch):
    import harness.checkpoint.shard_writer as shard_writer

    source = zoo_dir / "mixtral"
    plan = Plan.identity({i: 8 for i in (0, 1, 2)})
    out = tmp_path / "out"
    write_checkpoint(plan, source, out, progress=False)
    with pytest.raises(FileExistsError, match="already exists"):
        write_checkpoint(plan, source, out, progress=False)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(shard_writer, "_write_shard", broken)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(plan, source, out, progress=False, overwrite=True)
    assert (out / "recipe.json").is_file()  # the old checkpoint is still whole
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    monkeypatch.undo()
    pruned = _prune_plan([0, 1, 2], 8, [0, 1, 2, 3])
    write_checkpoint(pruned, source, out, progress=False, overwrite=True)
    assert json.loads((out / "config.json").read_text())["num_local_experts"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_plans_that_do_not_fit_fail_before_writing(zoo_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="plan expects 16"):
        write_checkpoint(Plan.identity({i: 16 for i in (0, 1, 2)}), zoo_dir / "qwen3_moe", out, progress=False)
    with pytest.raises(CheckpointError, match=r"checkpoint layers without a plan \[2\]"):
        write_checkpoint(Plan.identity({0: 8, 1: 8}), zoo_dir / "qwen3_moe", out, progress=False)
    grouped = zoo_dir / "glm4_moe_grouped"  # 16 experts in 4 router groups of 4
    wrong = list(range(8))  # keeps groups 0 and 1 whole: experts would change groups
    with pytest.raises(CheckpointError, match="router group"):
        write_checkpoint(_prune_plan([1, 2], 16, wrong), grouped, out, progress=False)
    with pytest.raises(CheckpointError, match="top 2 experts"):
        write_checkpoint(_prune_plan([1, 2], 16, [0, 4, 8, 12]), grouped, out, progress=False)
    with pytest.raises(ValueError, match="materialisation"):
        write_checkpoint(Plan.identity({i: 8 for i in (0, 1, 2)}), zoo_dir / "qwen3_moe", out, progress=False,
                         materialisation="collapsed")
    assert list(tmp_path.iterdir()) == []


def test_distinct_experts_are_found_by_their_bytes_not_their_ends(tmp_path):
    """Experts that agree in their first and last 4 KiB (the cheap digest) but not in between count apart;
    byte-identical ones, in another file and at another offset, count once."""
    from harness.checkpoint.counting import _distinct

    base = torch.arange(8192, dtype=torch.float32)  # 32 KiB: the middle is outside the cheap digest
    middle = base.clone()
    middle[4096] += 1
    save_file({"a": base, "b": middle}, str(tmp_path / "one.safetensors"))
    save_file({"pad": torch.zeros(3), "c": base.clone()}, str(tmp_path / "two.safetensors"))
    parts = {}
    for file in ("one", "two"):
        path = tmp_path / f"{file}.safetensors"
        header_len = int.from_bytes(path.read_bytes()[:8], "little")
        header = json.loads(path.read_bytes()[8:8 + header_len])
        for key, meta in header.items():
            if key in ("a", "b", "c"):
                start, end = (8 + header_len + x for x in meta["data_offsets"])
                parts[key] = [("down", path, start, end)]
    assert _distinct({0: parts["a"], 1: parts["b"], 2: parts["c"]}) == [0, 1]
    assert _distinct({0: parts["b"], 1: parts["a"], 2: parts["c"]}) == [0, 1]


# -- multi-token-prediction layers ------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["glm4_moe", "deepseek_v3", "glm4_moe_lite"])
def test_mtp_layers_count_the_same_for_the_baseline_and_the_variants(zoo_dir, family, tmp_path):
    """The MTP layers are not served and are not written into compressed checkpoints: neither total counts them."""
    from harness.checkpoint import parameter_counts
    from harness.standins.zoo import add_mtp_layers

    source = tmp_path / "with_mtp"
    shutil.copytree(zoo_dir / family, source)
    added = add_mtp_layers(source)
    model, arch = _load(source), get_arch(source)
    counts = parameter_counts(source)
    assert counts.extra_layers == sum(v.numel() for k, v in _all_tensors(source).items() if k in added) > 0
    expected = _brute_counts(model, arch.top_k)  # the loaded model: transformers skips the MTP layer too
    assert (counts.total, counts.activated) == expected == count_parameters(zoo_dir / family)

    plan = Plan.identity({i: arch.num_experts for i in _moe_layers(model, arch)})
    info = write_checkpoint(plan, source, tmp_path / "out", progress=False)
    written = json.loads((info.path / "config.json").read_text())
    assert written["num_nextn_predict_layers"] == 0 and not set(added) & set(_all_tensors(info.path))
    recipe = json.loads((info.path / "recipe.json").read_text())
    assert recipe["total_params"] == recipe["source"]["total_params"] == expected[0]


# -- family knowledge from the adapters ----------------------------------------------------------------------
def _multimodal_llama4(zoo_dir, tmp_path) -> Path:
    """The zoo llama4_text checkpoint laid out as Llama-4's multimodal wrapper: config.json nests it under
    `text_config`, and its tensors live under `language_model.`."""
    path = tmp_path / "llama4-wrapper"
    shutil.copytree(zoo_dir / "llama4_text", path)
    text = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({"model_type": "llama4", "text_config": text,
                                                  "architectures": ["Llama4ForConditionalGeneration"]}))
    tensors = load_file(str(path / "model.safetensors"))
    save_file({f"language_model.{k}": v for k, v in tensors.items()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})
    return path


def test_a_multimodal_wrapper_is_read_and_rewritten_through_its_text_config(zoo_dir, tmp_path):
    from harness.checkpoint import parameter_counts

    source = _multimodal_llama4(zoo_dir, tmp_path)
    arch = get_arch(source)
    assert arch.model_type == "llama4_text" and arch.num_experts == 8
    assert parameter_counts(source) == parameter_counts(zoo_dir / "llama4_text")
    kept = [1, 2, 4, 6]
    info = write_checkpoint(_prune_plan([0, 1, 2], 8, kept), source, tmp_path / "out", progress=False)
    config = json.loads((info.path / "config.json").read_text())
    assert config["model_type"] == "llama4" and "num_local_experts" not in config
    assert config["text_config"]["num_local_experts"] == 4
    written, original = _all_tensors(info.path), _all_tensors(source)
    assert written.keys() == original.keys()
    for key, tensor in original.items():
        rows = key.endswith(ROUTED) or key.endswith(".feed_forward.router.weight")
        assert torch.equal(written[key], tensor[kept] if rows else tensor), key


@pytest.mark.parametrize("family", list(ZOO))
def test_the_fused_expert_orientation_round_trips(zoo_dir, family):
    """An adapter's split of one expert's fused rows and its join are inverses, and split gives [out, in]."""
    arch = get_arch(zoo_dir / family)
    hidden, inter = 6, 4
    if family in ("llama4_text", "gpt_oss"):  # stored input-major: gate_up [H, 2I], down [I, H]
        gate_up, down = torch.randn(hidden, 2 * inter), torch.randn(inter, hidden)
    elif family == "nemotron_h":  # ungated: up [I, H], down [H, I], no gate
        up, down = torch.randn(inter, hidden), torch.randn(hidden, inter)
        expert = arch.split_fused_expert(up, down)
        assert expert.gate is None and (expert.up.shape, expert.down.shape) == ((inter, hidden), (hidden, inter))
        back = arch.join_fused_expert(expert)
        assert torch.equal(back[0], up) and torch.equal(back[1], down)
        return
    else:  # the module's fused layout: gate_up [2I, H], down [H, I]
        gate_up, down = torch.randn(2 * inter, hidden), torch.randn(hidden, inter)
    expert = arch.split_fused_expert(gate_up, down)
    assert (expert.gate.shape, expert.up.shape, expert.down.shape) == ((inter, hidden),) * 2 + ((hidden, inter),)
    back = arch.join_fused_expert(expert)
    assert torch.equal(back[0], gate_up) and torch.equal(back[1], down)


def test_the_shard_reader_matches_safetensors_and_refuses_truncated_files(zoo_dir, tmp_path):
    from harness.checkpoint import CheckpointError as Error
    from harness.checkpoint import ShardReader

    source = _sharded_copy(zoo_dir, "qwen3_moe", tmp_path)
    reader, expected = ShardReader(source), _all_tensors(source)
    assert set(reader.tensors) == set(expected)
    got = reader.load_keys(list(expected))
    assert all(torch.equal(got[k], expected[k]) and got[k].dtype == expected[k].dtype for k in expected)
    layer = reader.load_prefix("model.layers.1.")
    assert layer and set(layer) == {k for k in expected if k.startswith("model.layers.1.")}
    last = reader.files[-1]
    last.write_bytes(last.read_bytes()[:-64])
    truncated = ShardReader(source)
    with pytest.raises(Error, match="truncated"):
        truncated.load_keys([k for k, v in truncated.tensors.items() if v.file == last])
