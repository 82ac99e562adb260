"""A checkpoint's tensors (key -> dtype, shape) without its weights: from shard headers, or from config.json.

The headers are exact and cheap (a few KiB per shard). When only the config is at hand (a hub model not
downloaded yet, or the seed models' sizes in `seed_models.yaml`), `from_config` lays out the tensors each
family stores, in the stored dtype and quantised format (block FP8 with its `weight_scale_inv` grid;
compressed-tensors pack-quantized int with `weight_packed`, `weight_scale`, `weight_shape`), shared experts,
dense layers and multi-token-prediction layers included. tests/sweep/test_costs.py checks it key by key against
every zoo family's headers, float and quantised.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U16": 2,
            "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_DTYPE_NAMES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64"}


@dataclass(frozen=True)
class Tensor:
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return ITEMSIZE[self.dtype] * math.prod(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


Inventory = dict[str, Tensor]


def from_headers(model_dir: str | Path) -> Inventory:
    """Every tensor of a local safetensors checkpoint, from its headers."""
    from harness.checkpoint.shards import ShardReader

    return {k: Tensor(i.dtype, tuple(i.shape)) for k, i in ShardReader(model_dir).tensors.items()}


def total_bytes(inventory: Inventory) -> int:
    return sum(t.nbytes for t in inventory.values())


def config_dtype(config: dict[str, Any]) -> str:
    """The stored dtype of unquantised tensors ("dtype"/"torch_dtype", bfloat16 when absent)."""
    text = _text(config)
    name = str(text.get("dtype") or text.get("torch_dtype") or config.get("dtype") or config.get("torch_dtype")
               or "bfloat16")
    return _DTYPE_NAMES.get(name.replace("torch.", ""), "BF16")


def _text(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("text_config") or config


# -- config -> tensors ---------------------------------------------------------------------------------
def from_config(config: dict[str, Any]) -> Inventory:
    """The tensors a checkpoint of this config stores (text model; a multimodal wrapper's vision tower is not
    counted). Quantisation follows `quantization_config` (block FP8, or compressed-tensors pack-quantized)."""
    from harness.checkpoint.quantisation import quantization_config

    c = _text(config)
    family = c["model_type"]
    dtype = config_dtype(config)
    H, V, L = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    prefix = "language_model.model." if config.get("text_config") else "model."
    inv: dict[str, tuple[int, ...]] = {f"{prefix}embed_tokens.weight": (V, H), f"{prefix}norm.weight": (H,)}
    if not c.get("tie_word_embeddings", False):
        inv[f"{prefix[:-len('model.')]}lm_head.weight"] = (V, H)
    mtp = int(c.get("num_nextn_predict_layers") or 0) if family in ("glm4_moe", "deepseek_v3") else 0
    for i in range(L + mtp):
        p = f"{prefix}layers.{i}."
        inv.update({p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,)})
        inv.update(_attention(c, family, p + "self_attn."))
        inv.update(_feed_forward(c, family, i, p))
        if i >= L:  # multi-token prediction (GLM-4.5, DeepSeek-V3): a decoder layer and its projections
            inv.update({p + "eh_proj.weight": (H, 2 * H), p + "enorm.weight": (H,), p + "hnorm.weight": (H,),
                        p + "shared_head.norm.weight": (H,), p + "shared_head.head.weight": (V, H)})
    # Correction biases are kept in float32 by every family that has one.
    typed = {k: Tensor("F32" if _is_router_bias(k) else dtype, s) for k, s in inv.items()}
    qc = quantization_config(config)
    if qc:
        typed = _quantised(typed, qc, dtype)
    return typed


def _is_router_bias(key: str) -> bool:
    return key.endswith("e_score_correction_bias")


def _attention(c: dict[str, Any], family: str, p: str) -> dict[str, tuple[int, ...]]:
    H, nh = c["hidden_size"], c["num_attention_heads"]
    if family == "deepseek_v3":  # multi-head latent attention
        nope, rope, v = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
        kv_rank, q_rank = c["kv_lora_rank"], c.get("q_lora_rank")
        out = {p + "kv_a_proj_with_mqa.weight": (kv_rank + rope, H), p + "kv_a_layernorm.weight": (kv_rank,),
               p + "kv_b_proj.weight": (nh * (nope + v), kv_rank), p + "o_proj.weight": (H, nh * v)}
        if q_rank:
            out.update({p + "q_a_proj.weight": (q_rank, H), p + "q_a_layernorm.weight": (q_rank,),
                        p + "q_b_proj.weight": (nh * (nope + rope), q_rank)})
        else:
            out[p + "q_proj.weight"] = (nh * (nope + rope), H)
        return out
    hd = c.get("head_dim") or H // nh
    nkv = c.get("num_key_value_heads") or nh
    out = {p + "q_proj.weight": (nh * hd, H), p + "k_proj.weight": (nkv * hd, H), p + "v_proj.weight": (nkv * hd, H),
           p + "o_proj.weight": (H, nh * hd)}
    if c.get("attention_bias") or c.get("use_bias"):
        out.update({p + "q_proj.bias": (nh * hd,), p + "k_proj.bias": (nkv * hd,), p + "v_proj.bias": (nkv * hd,)})
        if family in ("ernie4_5_moe", "llama4_text", "gpt_oss"):
            out[p + "o_proj.bias"] = (H,)
    if family == "qwen3_moe" or (family == "glm4_moe" and c.get("use_qk_norm")):
        out.update({p + "q_norm.weight": (hd,), p + "k_norm.weight": (hd,)})
    if family == "minimax_m2":  # q/k RMS-normed over all heads at once
        out.update({p + "q_norm.weight": (nh * hd,), p + "k_norm.weight": (nkv * hd,)})
    if family == "gpt_oss":  # one attention-sink logit per head
        out[p + "sinks"] = (nh,)
    return out


def _mlp(p: str, inter: int, H: int, names=("gate_proj", "up_proj", "down_proj")) -> dict[str, tuple[int, ...]]:
    gate, up, down = names
    return {f"{p}{gate}.weight": (inter, H), f"{p}{up}.weight": (inter, H), f"{p}{down}.weight": (H, inter)}


def moe_layer_indices(c: dict[str, Any]) -> list[int]:
    """The decoder layers with routed experts (the model's forward, not MTP layers)."""
    family, L = c["model_type"], c["num_hidden_layers"]
    if family == "qwen3_moe":
        step, dense = c.get("decoder_sparse_step", 1) or 1, set(c.get("mlp_only_layers") or [])
        return [i for i in range(L) if i not in dense and (i + 1) % step == 0]
    if family == "mixtral":
        return list(range(L))
    if family in ("glm4_moe", "deepseek_v3"):
        freq = c.get("moe_layer_freq", 1) or 1
        return [i for i in range(L) if i >= c.get("first_k_dense_replace", 0) and i % freq == 0]
    if family == "ernie4_5_moe":
        start, interval = c.get("moe_layer_start_index", 0), c.get("moe_layer_interval", 1) or 1
        end = c.get("moe_layer_end_index")
        end = L - 1 if end is None or end < 0 else end
        return [i for i in range(L) if start <= i <= end and (i - start) % interval == 0]
    if family == "llama4_text":
        if c.get("moe_layers") is not None:
            return list(c["moe_layers"])
        step = c.get("interleave_moe_layer_step", 1) or 1
        return [i for i in range(L) if (i + 1) % step == 0]
    # Any other family (gpt_oss, minimax_m2, ...): every layer after the adapter's leading dense layers.
    from harness.archs import arch_class

    return list(range(arch_class(family).leading_dense_layers(c), L))


def _feed_forward(c: dict[str, Any], family: str, i: int, p: str) -> dict[str, tuple[int, ...]]:
    H = c["hidden_size"]
    moe = i in moe_layer_indices(c) or i >= c["num_hidden_layers"]  # MTP layers are MoE layers
    if family == "llama4_text":
        f = p + "feed_forward."
        if not moe:
            return _mlp(f, c.get("intermediate_size_mlp") or c["intermediate_size"], H)
        E, inter = c["num_local_experts"], c["intermediate_size"]
        return {f + "router.weight": (E, H), f + "experts.gate_up_proj": (E, H, 2 * inter),
                f + "experts.down_proj": (E, inter, H), **_mlp(f + "shared_expert.", inter, H)}
    if family in ("mixtral", "minimax_m2"):
        f = p + "block_sparse_moe."
        E, inter = c["num_local_experts"], c["intermediate_size"]
        out = {f + "gate.weight": (E, H)}
        if family == "minimax_m2" and c.get("use_routing_bias"):
            out[f + "e_score_correction_bias"] = (E,)
        for j in range(E):
            out.update(_mlp(f"{f}experts.{j}.", inter, H, ("w1", "w3", "w2")))
        return out
    if family == "gpt_oss":  # fused, input-major experts with biases; a biased router
        f = p + "mlp."
        E, inter = c["num_local_experts"], c["intermediate_size"]
        return {f + "router.weight": (E, H), f + "router.bias": (E,), f + "experts.gate_up_proj": (E, H, 2 * inter),
                f + "experts.gate_up_proj_bias": (E, 2 * inter), f + "experts.down_proj": (E, inter, H),
                f + "experts.down_proj_bias": (E, H)}
    f = p + "mlp."
    if not moe:
        return _mlp(f, c["intermediate_size"], H)
    if family == "qwen3_moe":
        E, shared, bias = c["num_experts"], 0, None
    elif family == "ernie4_5_moe":
        E, shared, bias = c["moe_num_experts"], c.get("moe_num_shared_experts", 0), (f + "moe_statics."
                                                                                     "e_score_correction_bias")
    else:
        E, shared, bias = c["n_routed_experts"], c.get("n_shared_experts", 0), f + "gate.e_score_correction_bias"
    inter = c["moe_intermediate_size"]
    out = {f + "gate.weight": (E, H)}
    if bias is not None:
        out[bias] = (1, E) if family == "ernie4_5_moe" else (E,)
    for j in range(E):
        out.update(_mlp(f"{f}experts.{j}.", inter, H))
    if shared:
        out.update(_mlp(f + "shared_experts.", inter * shared, H))
    return out


def _quantised(inv: Inventory, qc: dict[str, Any], dtype: str) -> Inventory:
    """The same tensors stored as the quantisation config says."""
    from harness.checkpoint.quantisation import WeightScheme

    linear = {k for k, t in inv.items() if k.endswith(".weight") and len(t.shape) == 2
              and not k.endswith(("embed_tokens.weight", "lm_head.weight", "shared_head.head.weight"))
              and not re.search(r"\.(gate|router)\.weight$", k) and "eh_proj" not in k}
    out: Inventory = {}
    if qc.get("quant_method") == "mxfp4":  # gpt-oss: the two fused expert weights, output-major, 32 values a group
        for k, t in inv.items():
            if k.endswith(("experts.gate_up_proj", "experts.down_proj")):
                experts, cols, rows = t.shape
                out[k + "_blocks"] = Tensor("U8", (experts, rows, cols // 32, 16))
                out[k + "_scales"] = Tensor("U8", (experts, rows, cols // 32))
            else:
                out[k] = t
        return out
    if qc.get("quant_method") == "fp8":
        block = qc.get("weight_block_size") or [128, 128]
        skip = set(qc.get("modules_to_not_convert") or [])
        for k, t in inv.items():
            module = k[: -len(".weight")]
            if k in linear and module not in skip:
                out[k] = Tensor("F8_E4M3", t.shape)
                out[module + ".weight_scale_inv"] = Tensor("F32", (math.ceil(t.shape[0] / block[0]),
                                                                   math.ceil(t.shape[1] / block[1])))
            else:
                out[k] = t
        return out
    groups = list((qc.get("config_groups") or {}).values())
    weights = (groups[0].get("weights") or {}) if groups else {}
    bits, group = int(weights.get("num_bits", 4)), weights.get("group_size")
    patterns = tuple(t for t in qc.get("ignore") or () if t.startswith("re:"))
    ignore = WeightScheme(targets=patterns, num_bits=bits, type="int", strategy="group")
    names = set(qc.get("ignore") or ()) - set(patterns)
    for k, t in inv.items():
        module = k[: -len(".weight")]
        if k in linear and module not in names and not ignore.matches(module):
            rows, cols = t.shape
            out[module + ".weight_packed"] = Tensor("I32", (rows, math.ceil(cols * bits / 32)))
            out[module + ".weight_scale"] = Tensor(dtype, (rows, math.ceil(cols / group) if group else 1))
            out[module + ".weight_shape"] = Tensor("I64", (2,))
        else:
            out[k] = t
    return out
