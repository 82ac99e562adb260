"""A checkpoint's tensors (key -> dtype, shape) without its weights: from shard headers, or from config.json.

The headers are exact and cheap (a few KiB per shard). When only the config is at hand (a hub model not
downloaded yet, or the seed models' sizes in `seed_models.yaml`), `from_config` takes the tensors each
family stores from its adapter (`harness.archs.layout`), shared experts, dense layers and multi-token-prediction
layers included, in the stored dtype and quantised format (block FP8 with its `weight_scale_inv` grid;
compressed-tensors pack-quantized int with `weight_packed`, `weight_scale`, `weight_shape`; MXFP4 blocks and
scales). tests/sweep/test_costs.py checks it key by key against
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
    counted): the family adapter lays them out (`harness.archs.layout`), and quantisation follows
    `quantization_config` (block FP8, compressed-tensors pack-quantized, MXFP4)."""
    from harness.archs import get_arch
    from harness.checkpoint.quantisation import quantization_config

    arch = get_arch(config)
    shapes = arch.stored_shapes(wrapped=arch.config is not config)
    dtype = config_dtype(config)
    # Correction biases are kept in float32 by every family that has one.
    typed = {k: Tensor("F32" if _is_router_bias(k) else dtype, s) for k, s in shapes.items()}
    qc = quantization_config(config)
    if qc:
        typed = _quantised(typed, qc, dtype)
    return typed


def _is_router_bias(key: str) -> bool:
    return key.endswith("e_score_correction_bias")


def moe_layer_indices(c: dict[str, Any]) -> list[int]:
    """The decoder layers with routed experts (the model's forward, not MTP layers), as the family says."""
    from harness.archs import get_arch

    return get_arch(c).moe_layer_indices()


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
