"""The observer's statistics equal a brute-force, token-by-token reference for every family."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.archs import UnsupportedModelError, get_arch
from harness.calibration.observer import Observer
from harness.calibration.run import calibrate_loaded, calibrate_sequential
from harness.standins.zoo import ZOO
from tests.standins.test_zoo import TEXTS

RTOL = 1e-6
EXTRAS = {"mean_out", "gated_out", "router_similarity"}  # every optional statistic


def _setup(zoo_dir, family):
    path = zoo_dir / family
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    return path, model, get_arch(path), batch


def _expert(weights, x, config=None):
    """f_j(x) = down (silu(gate x) * up x), straight from the canonical weights; for experts with biases
    (gpt-oss) its clamped SwiGLU, written out from the model card's formula; ungated experts (Nemotron-H):
    down relu(up x)^2."""
    if weights.gate is None:
        return weights.down @ torch.relu(weights.up @ x) ** 2
    if weights.gate_bias is None:
        return weights.down @ (torch.nn.functional.silu(weights.gate @ x) * (weights.up @ x))
    limit, alpha = config["swiglu_limit"], config["swiglu_alpha"]
    gate = torch.clamp(weights.gate @ x + weights.gate_bias, max=limit)
    up = torch.clamp(weights.up @ x + weights.up_bias, -limit, limit)
    return weights.down @ ((up + 1) * gate * torch.sigmoid(alpha * gate)) + weights.down_bias


def brute_force(model, arch, batch, routing=None):
    """Per token: the model's own router module, then each selected expert on its own.

    `routing(layer, x)` may replace the router, to show what a wrong re-derivation gives.
    Also checks, token by token, that the shared expert plus the gated routed experts
    reproduce the block output the model computed: the reference's view of routing and
    weights is the model's.
    """
    layers = arch.moe_layers(model)
    inputs, outputs, handles = {}, {}, []

    def keep(index):
        def hook(module, args, output):
            inputs[index] = args[0]
            outputs[index] = output[0] if isinstance(output, tuple) else output
        return hook

    for layer in layers:
        handles.append(layer.block.register_forward_hook(keep(layer.index)))
    with torch.no_grad():
        model(**batch)
    for handle in handles:
        handle.remove()
    real = batch.attention_mask.reshape(-1).bool()
    result = {}
    for layer in layers:
        n_exp, hidden = layer.num_experts, inputs[layer.index].shape[-1]
        x_all = inputs[layer.index].reshape(-1, hidden)
        y_all = outputs[layer.index].reshape(-1, hidden)
        stats = {name: torch.zeros(n_exp, dtype=torch.float64)
                 for name in ("count", "gate_sum", "ean_sum", "reap_sum", "max_abs_act")}
        stats["max_act"] = torch.full((n_exp,), -torch.inf, dtype=torch.float64)
        mean_out = torch.zeros(n_exp, hidden, dtype=torch.float64)
        gated_out = torch.zeros(n_exp, hidden, dtype=torch.float64)
        gram = torch.zeros(n_exp, n_exp, dtype=torch.float64)
        weights = [arch.expert_weights(layer, j) for j in range(n_exp)]
        for t in torch.nonzero(real)[:, 0].tolist():
            x = x_all[t]
            with torch.no_grad():
                own = arch.route(layer, x[None])
                chosen = routing(layer, x[None]) if routing else own
                combined = layer.shared(x[None])[0] if layer.shared is not None else torch.zeros_like(x)
                for j, g in zip(chosen.index[0].tolist(), chosen.weights[0].tolist(), strict=True):
                    f = _expert(weights[j], x, arch.config)
                    combined = combined + (_expert(weights[j], x * g) if arch.scales_input else g * f)
                    norm = f.double().norm().item()
                    stats["count"][j] += 1
                    stats["gate_sum"][j] += g
                    stats["ean_sum"][j] += norm
                    stats["reap_sum"][j] += g * norm
                    stats["max_act"][j] = max(stats["max_act"][j].item(), f.max().item())  # signed
                    stats["max_abs_act"][j] = max(stats["max_abs_act"][j].item(), f.abs().max().item())
                    gated_out[j] += g * f.double()
                if routing is None:
                    torch.testing.assert_close(combined, y_all[t], atol=1e-5, rtol=1e-4)
                for j in range(n_exp):
                    mean_out[j] += _expert(weights[j], x, arch.config).double()
                logits = own.logits.double().reshape(-1)
                gram += torch.outer(logits, logits)
        stats["max_act"] = torch.where(stats["count"] > 0, stats["max_act"], 0.0)  # never routed: 0
        stats["mean_out"] = mean_out / int(real.sum())
        stats["gated_out_sum"] = gated_out
        stats["router_gram"] = gram
        result[layer.index] = stats
    return result


def _close(actual, expected, what=""):
    """Equal to RTOL relative, entries measured against the tensor's scale (signed sums cancel)."""
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=RTOL * scale + 1e-12,
                               msg=lambda m: f"{what}: {m}")


def _assert_matches(observed, reference):
    assert set(observed) == set(reference)
    for index, ref in reference.items():
        got = observed[index]
        for name in ("count", "gate_sum", "ean_sum", "reap_sum", "max_act", "max_abs_act"):
            torch.testing.assert_close(getattr(got, name), ref[name], rtol=RTOL, atol=1e-9,
                                       msg=lambda m, n=name, i=index: f"layer {i} {n}: {m}")
        # Signed sums cancel, so entries are compared relative to the tensor's scale.
        for name in ("mean_out", "gated_out_sum", "router_gram"):
            scale = ref[name].abs().max().item()
            torch.testing.assert_close(getattr(got, name), ref[name], rtol=RTOL, atol=RTOL * scale,
                                       msg=lambda m, n=name, i=index: f"layer {i} {n}: {m}")


@pytest.mark.parametrize("family", list(ZOO))
def test_statistics_equal_brute_force_reference(zoo_dir, family):
    _, model, arch, batch = _setup(zoo_dir, family)
    with torch.no_grad(), Observer(model, arch, extras=EXTRAS) as observer:
        observer.set_mask(batch.attention_mask)
        model(**batch)
    _assert_matches(observer.stats, brute_force(model, arch, batch))
    for stats in observer.stats.values():
        assert stats.count.sum() == stats.tokens * arch.top_k
        sim = stats.router_similarity
        torch.testing.assert_close(sim.diagonal(), torch.ones(arch.num_experts, dtype=torch.float64))


def _naive_softmax_topk(arch):
    """The re-derivation DESIGN.md forbids: softmax + top-k of the raw logits."""
    from harness.archs.base import Routing

    def route(layer, x):
        logits = torch.nn.functional.linear(x.float(), layer.router.weight.float())
        weights, index = torch.softmax(logits, -1).topk(arch.top_k, dim=-1)
        return Routing(index=index, weights=weights, logits=logits)
    return route


@pytest.mark.parametrize("family", ["glm4_moe", "glm4_moe_grouped", "deepseek_v3", "glm4_moe_lite", "kimi_linear",
                                    "minimax_m2", "nemotron_h"])
def test_naive_routing_would_fail_the_reference(zoo_dir, family):
    _, model, arch, batch = _setup(zoo_dir, family)
    with torch.no_grad(), Observer(model, arch) as observer:
        observer.set_mask(batch.attention_mask)
        model(**batch)
    wrong = brute_force(model, arch, batch, routing=_naive_softmax_topk(arch))
    with pytest.raises(AssertionError):
        _assert_matches(observer.stats, wrong)
    # Not just the weights: the naive rule selects different experts.
    assert any(not torch.equal(observer.stats[i].count, wrong[i]["count"]) for i in wrong)


@pytest.mark.parametrize("family", ["qwen3_moe", "glm4_moe_grouped", "llama4_text"])
def test_statistics_do_not_depend_on_batch_size_or_padding(zoo_dir, family):
    path, model, arch, batch = _setup(zoo_dir, family)
    tokenizer = AutoTokenizer.from_pretrained(path)
    extra = tokenizer(TEXTS * 2, return_tensors="pt", padding="max_length",
                      max_length=batch.input_ids.shape[1] + 11)
    reference = calibrate_loaded(model, arch, batch.input_ids, batch.attention_mask, batch_size=8,
                                 extras=EXTRAS)
    one_by_one = calibrate_loaded(model, arch, batch.input_ids, batch.attention_mask, batch_size=1,
                                  extras=EXTRAS)
    padded = calibrate_loaded(model, arch, extra.input_ids, extra.attention_mask, batch_size=3,
                              extras=EXTRAS)
    for index, ref in reference.items():
        for name, tensor in ref.tensors().items():
            _close(one_by_one[index].tensors()[name], tensor, f"batch size 1, layer {index} {name}")
            doubled = tensor if name in ("max_act", "max_abs_act") else 2 * tensor
            _close(padded[index].tensors()[name], doubled, f"padded, layer {index} {name}")


@pytest.mark.parametrize("family", list(ZOO))
def test_sequential_mode_equals_normal_mode(zoo_dir, family):
    path, model, arch, batch = _setup(zoo_dir, family)
    normal = calibrate_loaded(model, arch, batch.input_ids, batch.attention_mask, batch_size=2,
                              extras=EXTRAS)
    sequential = calibrate_sequential(path, batch.input_ids, batch.attention_mask, batch_size=3,
                                      extras=EXTRAS)
    assert set(sequential) == set(normal)
    for index, ref in normal.items():
        for name, tensor in ref.tensors().items():
            _close(sequential[index].tensors()[name], tensor, f"sequential, layer {index} {name}")


def test_observer_leaves_model_output_unchanged(zoo_dir):
    _, model, arch, batch = _setup(zoo_dir, "glm4_moe_grouped")
    with torch.no_grad():
        plain = model(**batch).logits
        with Observer(model, arch, extras=EXTRAS) as observer:
            observer.set_mask(batch.attention_mask)
            observed = model(**batch).logits
        after = model(**batch).logits
    torch.testing.assert_close(observed, plain, atol=1e-5, rtol=1e-5)
    assert torch.equal(after, plain), "detaching must restore the original forward"


def test_unsupported_family_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(UnsupportedModelError, match="supported: deepseek_v3, ernie4_5_moe"):
        get_arch(tmp_path)


@pytest.mark.parametrize("family", list(ZOO))
def test_adapter_reads_config_keys(zoo_dir, family):
    _, model, arch, _ = _setup(zoo_dir, family)
    layers = arch.moe_layers(model)
    # Ungated experts (Nemotron-H) hold `up_proj` where the others fuse `gate_up_proj`.
    assert all(getattr(layer.experts, "gate_up_proj", getattr(layer.experts, "up_proj", None)).shape[0]
               == arch.num_experts for layer in layers)
    if family == "glm4_moe_grouped":
        assert (arch.n_group, arch.topk_group) == (4, 2)
    shared = {layer.shared is not None for layer in layers}
    assert shared == {family not in ("qwen3_moe", "mixtral", "gpt_oss", "minimax_m2")}


def _paper_code_routing(arch, renormalise: bool):
    """The paper code's formula, written out: top-k of the raw router logits, softmax over all logits,
    renormalised over the selected experts when the config has norm_topk_prob."""
    from harness.archs.base import Routing

    def route(layer, x):
        logits = arch.route(layer, x).logits.float()
        index = logits.topk(arch.top_k, dim=-1).indices
        weights = torch.softmax(logits, dim=-1).gather(1, index)
        if renormalise:
            weights = weights / weights.sum(-1, keepdim=True)
        return Routing(index=index, weights=weights, logits=logits)
    return route


def _observed(model, arch, batch, routing):
    with torch.no_grad(), Observer(model, arch, routing=routing) as observer:
        observer.set_mask(batch.attention_mask)
        logits = model(**batch).logits
    return observer.stats, logits


@pytest.mark.parametrize("family", ["qwen3_moe", "glm4_moe", "deepseek_v3", "llama4_text", "mixtral"])
def test_reap_repo_routing_is_the_paper_codes_formula(zoo_dir, family):
    _, model, arch, batch = _setup(zoo_dir, family)
    ours, plain_logits = _observed(model, arch, batch, "model")
    paper, paper_logits = _observed(model, arch, batch, "reap_repo")
    # The forward is the model's own in both modes: only what is recorded differs.
    torch.testing.assert_close(paper_logits, plain_logits, atol=1e-5, rtol=1e-5)
    renormalise = bool(arch.config.get("norm_topk_prob", False))
    reference = brute_force(model, arch, batch, routing=_paper_code_routing(arch, renormalise))
    for index, ref in reference.items():
        for name in ("count", "gate_sum", "ean_sum", "reap_sum", "max_act", "max_abs_act"):
            torch.testing.assert_close(getattr(paper[index], name), ref[name], rtol=RTOL, atol=1e-9,
                                       msg=lambda m, n=name, i=index: f"layer {i} {n}: {m}")
    same = all(torch.equal(ours[i].count, paper[i].count) and torch.allclose(ours[i].reap_sum, paper[i].reap_sum,
                                                                             rtol=1e-9, atol=0) for i in ours)
    if family == "qwen3_moe":  # softmax top-k with renormalisation: the paper's code is right there
        assert same
        for i in ours:
            for name, tensor in ours[i].tensors().items():
                _close(paper[i].tensors()[name], tensor, f"layer {i} {name}")
    elif family in ("glm4_moe", "deepseek_v3"):  # sigmoid, correction bias, scaling: it is not
        assert not same
        assert any(not torch.equal(ours[i].count, paper[i].count) for i in ours), "the selection differs too"


def test_routing_mode_is_part_of_the_calibration_key():
    from harness.calibration.data import CalibrationSpec, spec_fingerprint

    spec = {"datasets": [{"source": "org/data"}], "samples": 4, "length": 8}
    model = spec_fingerprint(CalibrationSpec(**spec))
    paper = spec_fingerprint(CalibrationSpec(**spec, routing="reap_repo"))
    assert model != paper and paper["routing"] == "reap_repo"
    assert spec_fingerprint(CalibrationSpec(**spec, device="cpu")) == model
