"""The quantised on-disk formats of the seed checkpoints: detect, dequantise, quantise.

Calibration dequantises one decoder layer at a time for the observer, the checkpoint
writer keeps the stored format, the zoo writes tiny quantised stand-ins. All of them
use this module, so each format's arithmetic lives here once.

**fp8_block** (Qwen3-Coder-480B-A35B-Instruct-FP8, DeepSeek-V3; `quant_method: fp8`):
`X.weight` is float8_e4m3fn and `X.weight_scale_inv` (float32 or bf16) holds one
multiplier per `weight_block_size` block (128 x 128), the grid ceil-divided so edge
blocks may be partial. Despite the name, the dequantised weight is `q * weight_scale_inv`.
compressed-tensors float8 weights (`X.weight` + `X.weight_scale`, per-tensor, per-channel
or block) are the same arithmetic and are read by the same code.

**packed_int4 / packed_int8** (Kimi-K2 W4A16; compressed-tensors `format: pack-quantized`):
`X.weight_packed` int32 [rows, ceil(cols / (32 // bits))], `X.weight_scale` [rows, groups]
(or [rows, 1] per channel, [1] per tensor), `X.weight_shape` int [rows, cols], and for
asymmetric schemes `X.weight_zero_point`. Each integer q in [-2^(b-1), 2^(b-1) - 1] is
stored offset-binary, u = q + 2^(b-1), in b bits; along a row, value k of each run of
32 // b values sits at bits [k*b, (k+1)*b) of its int32 word, and the last word of a row
is zero-padded. Zero points are packed the same way down the columns (dim -2). The weight
is (q - zero_point) * scale, broadcast over each group of `group_size` columns (or through
`weight_g_idx` when the groups are activation-ordered).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

FORMATS = ("none", "fp8_block", "packed_int4", "packed_int8", "mxfp4")
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
# Names of the FP8 multipliers: the DeepSeek/Qwen `fp8` method, then compressed-tensors.
FP8_SCALE_NAMES = ("weight_scale_inv", "weight_scale")
# Tensors that describe how a weight is quantised; they are not parameters of the model.
QUANT_COMPANIONS = frozenset({
    "weight_scale", "weight_scale_inv", "weight_zero_point", "weight_shape", "weight_global_scale",
    "weight_g_idx", "input_scale", "input_global_scale", "output_scale", "k_scale", "v_scale", "q_scale",
})
PACKED_NAME = "weight_packed"
# MXFP4 tensors: `X_blocks` (the packed values) and `X_scales` (e8m0 exponents, not parameters).
MXFP4_BLOCKS, MXFP4_SCALES = "_blocks", "_scales"
MXFP4_GROUP = 32


class QuantisationError(ValueError):
    """A checkpoint's quantisation is not one this module reads, or its tensors do not fit it."""


# -- detection ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightScheme:
    """How one compressed-tensors config group quantises its weights."""

    targets: tuple[str, ...]
    num_bits: int
    type: str  # "int" | "float"
    strategy: str  # "group" | "channel" | "tensor" | "block"
    symmetric: bool = True
    group_size: int | None = None
    block_structure: tuple[int, int] | None = None
    format: str | None = None

    def matches(self, module: str) -> bool:
        """Whether this group targets `module` (a `re:` pattern, or a class name such as "Linear",
        which every projection weight is)."""
        for target in self.targets:
            if target.startswith("re:"):
                if re.match(target[3:], module):
                    return True
            else:
                return True
        return False


@dataclass(frozen=True)
class QuantFormat:
    """A checkpoint's weight quantisation, as far as dequantising it needs.

    `name` is one of FORMATS. `block_size` is the FP8 `weight_block_size` (None: inferred
    from each scale's shape); `schemes` are the compressed-tensors weight schemes by group.
    """

    name: str = "none"
    block_size: tuple[int, int] | None = None
    schemes: tuple[WeightScheme, ...] = ()
    ignore: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_quantised(self) -> bool:
        return self.name != "none"

    @property
    def num_bits(self) -> int | None:
        return {"fp8_block": 8, "packed_int4": 4, "packed_int8": 8, "mxfp4": 4}.get(self.name)

    def scheme_for(self, module: str, *, packed: bool) -> WeightScheme | None:
        """The compressed-tensors scheme of `module` (int schemes for packed weights, float ones otherwise)."""
        candidates = [s for s in self.schemes if (s.type == "int") == packed]
        return next((s for s in candidates if s.matches(module)), candidates[0] if candidates else None)


def quantization_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The quantisation section of a config.json (also under text_config, or as compression_config)."""
    for section in (config, config.get("text_config") or {}):
        found = section.get("quantization_config") or section.get("compression_config")
        if found:
            return dict(found)
    return {}


def _scheme(group: Mapping[str, Any], top_format: str | None) -> WeightScheme | None:
    weights = group.get("weights")
    if not weights:
        return None
    block = weights.get("block_structure")
    if isinstance(block, str):  # old configs: "128x128"
        block = [int(x) for x in block.lower().split("x")]
    return WeightScheme(
        targets=tuple(group.get("targets") or ("Linear",)),
        num_bits=int(weights.get("num_bits", 8)),
        type=str(weights.get("type", "int")),
        strategy=str(weights.get("strategy") or "tensor"),
        symmetric=bool(weights.get("symmetric", True)),
        group_size=weights.get("group_size"),
        block_structure=tuple(int(b) for b in block) if block else None,
        format=group.get("format") or top_format,
    )


def _from_compressed_tensors(qc: dict[str, Any]) -> QuantFormat:
    top = qc.get("format")
    schemes = tuple(s for g in (qc.get("config_groups") or {}).values() if (s := _scheme(g, top)) is not None)
    if not schemes:
        raise QuantisationError("compressed-tensors quantization_config without config_groups[*].weights")
    ignore = tuple(qc.get("ignore") or ())
    packed = [s for s in schemes if s.type == "int" and s.format == "pack-quantized"]
    floats = [s for s in schemes if s.type == "float" and s.num_bits == 8]
    other = [s for s in schemes if s not in packed and s not in floats]
    if other:
        s = other[0]
        raise QuantisationError(f"compressed-tensors weights {s.type}{s.num_bits} in format {s.format!r} are not "
                                f"supported: the harness reads pack-quantized int4/int8 and float8 weights")
    bits = {s.num_bits for s in packed}
    if bits - {4, 8}:
        raise QuantisationError(f"pack-quantized weights of {sorted(bits)} bits are not supported (4 or 8)")
    if len(bits) > 1:
        raise QuantisationError(f"pack-quantized groups with different bit widths {sorted(bits)}")
    name = f"packed_int{bits.pop()}" if packed else "fp8_block"
    return QuantFormat(name=name, schemes=schemes, ignore=ignore, config=qc)


def _from_tensor_names(names: Iterable[str]) -> QuantFormat:
    last = {name.rpartition(".")[2] for name in names}
    if PACKED_NAME in last:
        return QuantFormat(name="packed_int4")  # without a config, assume the common width
    if any(n.endswith(MXFP4_BLOCKS) and f"{n[:-len(MXFP4_BLOCKS)]}{MXFP4_SCALES}" in last for n in last):
        return QuantFormat(name="mxfp4")
    if "weight_scale_inv" in last:
        return QuantFormat(name="fp8_block")
    return QuantFormat()


def detect_format(config: Mapping[str, Any] | str | Path, tensor_names: Iterable[str] | None = None
                  ) -> QuantFormat:
    """The quantisation of a checkpoint: from config.json's `quantization_config`, else from its tensor names.

    `config` is the parsed config.json or the model directory. Raises QuantisationError for
    quantisation methods this module cannot dequantise (rather than reading them as float).
    """
    if not isinstance(config, Mapping):
        config = json.loads((Path(config) / "config.json").read_text())
    qc = quantization_config(config)
    method = str(qc.get("quant_method") or "").lower()
    if method == "fp8":
        block = qc.get("weight_block_size")
        return QuantFormat(name="fp8_block", block_size=tuple(int(b) for b in block) if block else None,
                           ignore=tuple(qc.get("modules_to_not_convert") or ()), config=qc)
    if method == "compressed-tensors":
        return _from_compressed_tensors(qc)
    if method == "mxfp4":
        return QuantFormat(name="mxfp4", ignore=tuple(qc.get("modules_to_not_convert") or ()), config=qc)
    if method:
        raise QuantisationError(f"quant_method {method!r} is not supported: the harness reads 'fp8' (block FP8), "
                                f"'compressed-tensors' (pack-quantized int4/int8, float8) and 'mxfp4' checkpoints")
    return _from_tensor_names(tensor_names) if tensor_names is not None else QuantFormat()


# -- FP8 blocks -------------------------------------------------------------------------------------------
def scale_block(weight_shape: Sequence[int], scale_shape: Sequence[int],
                block: Sequence[int] | None = None) -> tuple[int, int]:
    """The (rows, cols) block one scale entry covers.

    `block` (the config's `weight_block_size`) wins; without it the block is inferred from
    the shapes, which only works when the scale grid divides the weight exactly.
    """
    rows, cols = int(weight_shape[0]), int(weight_shape[1])
    grid = [int(s) for s in scale_shape] if len(scale_shape) else [1, 1]
    if len(grid) == 1:  # per-output-channel or per-tensor
        grid = [grid[0], 1]
    if block is not None:
        b0, b1 = int(block[0]), int(block[1])
        if grid != [-(-rows // b0), -(-cols // b1)]:
            raise ValueError(f"scale grid {grid} does not fit a {rows}x{cols} weight in {b0}x{b1} blocks")
        return b0, b1
    if rows % grid[0] or cols % grid[1]:
        raise ValueError(f"cannot infer the quantisation block of a {rows}x{cols} weight from a scale of shape "
                         f"{grid}: set quantization_config.weight_block_size in config.json")
    return rows // grid[0], cols // grid[1]


def _expand(scale: torch.Tensor, rows: int, cols: int, block: tuple[int, int]) -> torch.Tensor:
    grid = scale.reshape(-(-rows // block[0]), -(-cols // block[1]))
    return grid.repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]


def dequantise_fp8(weight: torch.Tensor, scale: torch.Tensor, block: Sequence[int] | None = None, *,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """weight = q * scale (float32 arithmetic), each scale entry covering one block; returned as `dtype`."""
    rows, cols = weight.shape
    b = scale_block(weight.shape, scale.shape, block)
    return (weight.float() * _expand(scale.float(), rows, cols, b)).to(dtype)


def quantise_fp8(weight: torch.Tensor, scale_shape: Sequence[int] | None = None, block: Sequence[int] | None = None,
                 *, dtype: torch.dtype = torch.float8_e4m3fn, scale_dtype: torch.dtype = torch.float32
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale) with scale = max|block| / fp8 max, in the layout of `scale_shape`.

    Give `block` (e.g. (128, 128); the grid is ceil-divided), `scale_shape`, or both.
    q is computed against the scale as stored (after rounding to `scale_dtype`).
    """
    rows, cols = weight.shape
    if scale_shape is None:
        if block is None:
            raise ValueError("quantise_fp8 needs the block size or the scale shape")
        scale_shape = (-(-rows // int(block[0])), -(-cols // int(block[1])))
    b0, b1 = scale_block(weight.shape, scale_shape, block)
    grid_r, grid_c = -(-rows // b0), -(-cols // b1)
    padded = torch.zeros(grid_r * b0, grid_c * b1, dtype=torch.float64)
    padded[:rows, :cols] = weight.double()
    amax = padded.abs().reshape(grid_r, b0, grid_c, b1).amax(dim=(1, 3))
    fmax = torch.finfo(dtype).max
    scale = torch.where(amax > 0, amax / fmax, torch.ones_like(amax)).to(scale_dtype)
    q = (weight.double() / _expand(scale.double(), rows, cols, (b0, b1))).clamp(-fmax, fmax).to(dtype)
    return q, scale.reshape(tuple(scale_shape))


# -- packed integers (compressed-tensors pack-quantized) ----------------------------------------------------
def _check_bits(num_bits: int) -> int:
    if not 1 <= num_bits <= 8:
        raise ValueError(f"packed integers need 1..8 bits, got {num_bits}")
    return 32 // num_bits


def pack_int32(values: torch.Tensor, num_bits: int, dim: int = -1) -> torch.Tensor:
    """Signed integers in [-2^(b-1), 2^(b-1) - 1] -> int32 words along `dim` (-1: rows; -2: columns)."""
    per_word = _check_bits(num_bits)
    offset = 1 << (num_bits - 1)
    v = values.to(torch.int64)
    if v.numel() and (int(v.min()) < -offset or int(v.max()) >= offset):
        raise ValueError(f"values outside the signed {num_bits}-bit range [{-offset}, {offset - 1}]")
    v = (v + offset).movedim(dim, -1)
    n = v.shape[-1]
    words = -(-n // per_word)
    v = torch.nn.functional.pad(v, (0, words * per_word - n))  # padding stores u = 0
    shifts = torch.arange(per_word, dtype=torch.int64) * num_bits
    word = (v.reshape(*v.shape[:-1], words, per_word) << shifts).sum(-1)
    word = torch.where(word >= 1 << 31, word - (1 << 32), word)  # the int32 with the same bits
    return word.to(torch.int32).movedim(-1, dim).contiguous()


def unpack_int32(packed: torch.Tensor, num_bits: int, size: int, dim: int = -1) -> torch.Tensor:
    """Inverse of pack_int32: int8 values, `size` of them along `dim` (the padding dropped)."""
    per_word = _check_bits(num_bits)
    if packed.dtype != torch.int32:
        raise QuantisationError(f"packed weights must be int32, got {packed.dtype}")
    words = packed.to(torch.int64).movedim(dim, -1) & 0xFFFFFFFF
    if words.shape[-1] != -(-size // per_word):
        raise QuantisationError(f"{words.shape[-1]} packed words cannot hold {size} {num_bits}-bit values")
    shifts = torch.arange(per_word, dtype=torch.int64) * num_bits
    u = (words[..., None] >> shifts) & ((1 << num_bits) - 1)
    u = u.reshape(*words.shape[:-1], -1)[..., :size]
    return (u - (1 << (num_bits - 1))).to(torch.int8).movedim(-1, dim).contiguous()


def _per_column(values: torch.Tensor, cols: int, group_size: int | None, g_idx: torch.Tensor | None,
                what: str) -> torch.Tensor:
    """A [rows, groups] (or [rows, 1], [1]) tensor broadcast to [rows, cols]."""
    if values.ndim == 0 or values.numel() == 1:
        return values.reshape(1, 1)
    if values.ndim == 1:
        values = values[:, None]
    groups = values.shape[-1]
    if groups == 1:
        return values
    if g_idx is not None:
        return values[:, g_idx.long()]
    size = int(group_size) if group_size else -(-cols // groups)
    if -(-cols // size) != groups:
        raise QuantisationError(f"{what} has {groups} groups, which does not fit {cols} columns in groups of {size}")
    return values.repeat_interleave(size, dim=1)[:, :cols]


def dequantise_packed(packed: torch.Tensor, scale: torch.Tensor, shape: Sequence[int] | torch.Tensor, *,
                      num_bits: int = 4, group_size: int | None = None, zero_point: torch.Tensor | None = None,
                      g_idx: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(q - zero_point) * scale of a pack-quantized weight of `shape` [rows, cols] (float32 arithmetic)."""
    rows, cols = (int(s) for s in (shape.tolist() if isinstance(shape, torch.Tensor) else shape))
    q = unpack_int32(packed, num_bits, cols).float()
    if q.shape[0] != rows:
        raise QuantisationError(f"packed weight has {q.shape[0]} rows, weight_shape says {rows}")
    if zero_point is not None:
        if zero_point.dtype == torch.int32:  # packed down the columns, like the weight along its rows
            groups = scale.shape[-1] if scale.ndim == 2 else 1
            zero_point = unpack_int32(zero_point, num_bits, rows, dim=-2).reshape(rows, groups)
        q = q - _per_column(zero_point.float(), cols, group_size, g_idx, "weight_zero_point")
    return (q * _per_column(scale.float(), cols, group_size, g_idx, "weight_scale")).to(dtype)


def quantise_packed(weight: torch.Tensor, *, num_bits: int = 4, group_size: int | None = 32,
                    scale_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Symmetric round-to-nearest pack-quantized tensors of a [rows, cols] weight.

    One scale per row and group of `group_size` columns (None: per row), scale = max|w| / qmax
    with qmax = 2^(b-1) - 1, so the largest magnitude of each group is represented exactly and
    |w - q * scale| <= scale / 2. Returns {"weight_packed", "weight_scale", "weight_shape"}; the
    scale is stored as `scale_dtype` (default: the weight's dtype) and q is computed against it.
    """
    rows, cols = weight.shape
    size = int(group_size) if group_size else cols
    groups = -(-cols // size)
    w = weight.double()
    padded = torch.nn.functional.pad(w, (0, groups * size - cols))
    amax = padded.abs().reshape(rows, groups, size).amax(-1)
    qmax = (1 << (num_bits - 1)) - 1
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax)).to(scale_dtype or weight.dtype)
    q = torch.round(w / _per_column(scale.double(), cols, size, None, "scale")).clamp(-qmax - 1, qmax)
    return {"weight_packed": pack_int32(q, num_bits), "weight_scale": scale,
            "weight_shape": torch.tensor([rows, cols], dtype=torch.int64)}


def packed_numel(packed_shape: Sequence[int], num_bits: int = 4, weight_shape: Sequence[int] | None = None) -> int:
    """Logical parameters of a packed weight: its weight_shape, else what its int32 words can hold."""
    if weight_shape is not None:
        return math.prod(int(s) for s in weight_shape)
    return math.prod(int(s) for s in packed_shape) * (32 // num_bits)


# -- MXFP4 (e2m1 values, e8m0 scale per 32) -------------------------------------------------------------------
# The e2m1 code points 0..7; codes 8..15 are their negatives (sign in bit 3).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def dequantise_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, *, dtype: torch.dtype = torch.float32
                     ) -> torch.Tensor:
    """[..., rows, G, 16] uint8 blocks and [..., rows, G] e8m0 scales -> [..., rows, G * 32] in `dtype`
    (stored orientation; gpt-oss's module parameter is its transpose)."""
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise QuantisationError(f"MXFP4 blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}")
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != MXFP4_GROUP // 2:
        raise QuantisationError(f"MXFP4 blocks {tuple(blocks.shape)} do not fit scales {tuple(scales.shape)}: "
                                f"expected blocks [..., G, 16] beside scales [..., G]")
    table = torch.tensor(E2M1_VALUES + tuple(-v for v in E2M1_VALUES), dtype=torch.float32)
    codes = torch.stack([blocks & 0x0F, blocks >> 4], dim=-1).reshape(*blocks.shape[:-1], MXFP4_GROUP)
    values = table[codes.long()] * torch.exp2(scales.float() - 127.0)[..., None]
    return values.reshape(*blocks.shape[:-2], blocks.shape[-2] * MXFP4_GROUP).to(dtype)


def quantise_mxfp4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., rows, cols] float (cols a multiple of 32) -> (blocks, scales) as `dequantise_mxfp4` reads them.

    Each group of 32 gets the smallest power-of-two scale that fits its largest magnitude into e2m1's
    range (6), and each value the nearest e2m1 point (ties to the smaller magnitude)."""
    cols = weight.shape[-1]
    if cols % MXFP4_GROUP:
        raise QuantisationError(f"MXFP4 needs a multiple of {MXFP4_GROUP} values per row, got {cols}")
    w = weight.float().reshape(*weight.shape[:-1], cols // MXFP4_GROUP, MXFP4_GROUP)
    amax = w.abs().amax(dim=-1)
    exponent = torch.where(amax > 0, torch.ceil(torch.log2(amax / 6.0)), torch.full_like(amax, -127.0))
    exponent = exponent.clamp(-127, 127)
    scaled = w / torch.exp2(exponent)[..., None]
    grid = torch.tensor(E2M1_VALUES, dtype=torch.float32)
    index = (scaled.abs()[..., None] - grid).abs().argmin(dim=-1)  # first minimum: ties to the smaller
    codes = (index + 8 * ((scaled < 0) & (index > 0)).long()).to(torch.uint8)
    pairs = codes.reshape(*codes.shape[:-1], MXFP4_GROUP // 2, 2)
    blocks = (pairs[..., 0] | (pairs[..., 1] << 4)).to(torch.uint8)
    return blocks.contiguous(), (exponent + 127).to(torch.uint8).contiguous()


def mxfp4_config(modules_to_not_convert: Iterable[str]) -> dict[str, Any]:
    """`quantization_config` of an MXFP4 checkpoint, as gpt-oss's release writes it."""
    return {"quant_method": "mxfp4", "modules_to_not_convert": list(modules_to_not_convert)}


def _mxfp4_pairs(names: Iterable[str]) -> dict[str, tuple[str, str]]:
    """stem -> (blocks key, scales key) for every MXFP4 tensor among `names`."""
    names = set(names)
    return {n[:-len(MXFP4_BLOCKS)]: (n, f"{n[:-len(MXFP4_BLOCKS)]}{MXFP4_SCALES}") for n in names
            if n.endswith(MXFP4_BLOCKS) and f"{n[:-len(MXFP4_BLOCKS)]}{MXFP4_SCALES}" in names}


def mxfp4_logical_numel(key: str, shape: Sequence[int], names: Iterable[str]) -> int | None:
    """Parameters an MXFP4 tensor stands for (two per block byte, none for scales); None if `key` is not one."""
    if key.endswith(MXFP4_BLOCKS) and f"{key[:-len(MXFP4_BLOCKS)]}{MXFP4_SCALES}" in names:
        return 2 * math.prod(shape)
    if key.endswith(MXFP4_SCALES) and f"{key[:-len(MXFP4_SCALES)]}{MXFP4_BLOCKS}" in names:
        return 0
    return None


# -- one projection, and a whole prefix of tensors ------------------------------------------------------------
def is_companion(name: str) -> bool:
    """Whether a tensor (by its last name component) describes quantisation rather than being a parameter."""
    return name.rpartition(".")[2] in QUANT_COMPANIONS


def dequantise(tensors: Mapping[str, torch.Tensor], fmt: QuantFormat, *, dtype: torch.dtype = torch.float32,
               module: str = "") -> torch.Tensor:
    """One projection's float weight from its stored tensors, keyed by local name.

    FP8: {"weight", "weight_scale_inv" | "weight_scale"}; packed: {"weight_packed", "weight_scale",
    "weight_shape"[, "weight_zero_point", "weight_g_idx"]}. An unquantised {"weight"} is only cast.
    `module` (the projection's name) selects the compressed-tensors group in mixed configs.
    """
    where = module or "projection"
    if PACKED_NAME in tensors:
        scheme = fmt.scheme_for(module, packed=True)
        if "weight_shape" not in tensors or "weight_scale" not in tensors:
            raise QuantisationError(f"{where}: weight_packed without weight_scale and weight_shape")
        if scheme is not None:
            num_bits = scheme.num_bits
        elif fmt.name.startswith("packed_int"):
            num_bits = int(fmt.num_bits or 4)
        else:  # no config for it: the width whose words fit weight_shape
            cols, words = int(tensors["weight_shape"][-1]), tensors[PACKED_NAME].shape[-1]
            fits = [b for b in (4, 8) if -(-cols // (32 // b)) == words]
            if len(fits) != 1:
                raise QuantisationError(f"{where}: cannot tell the bit width of {words} words for {cols} columns")
            num_bits = fits[0]
        if scheme is not None and not scheme.symmetric and "weight_zero_point" not in tensors:
            raise QuantisationError(f"{where}: asymmetric scheme but no weight_zero_point")
        return dequantise_packed(tensors[PACKED_NAME], tensors["weight_scale"], tensors["weight_shape"],
                                 num_bits=num_bits, group_size=scheme.group_size if scheme else None,
                                 zero_point=tensors.get("weight_zero_point"), g_idx=tensors.get("weight_g_idx"),
                                 dtype=dtype)
    if "weight" not in tensors:
        raise QuantisationError(f"{where}: neither weight nor weight_packed among {sorted(tensors)}")
    weight = tensors["weight"]
    if weight.dtype not in FP8_DTYPES:
        if not weight.dtype.is_floating_point:
            raise QuantisationError(f"{where}: integer weight of dtype {weight.dtype} in an unsupported format")
        return weight.to(dtype)
    scale_name = next((n for n in FP8_SCALE_NAMES if n in tensors), None)
    if scale_name is None:
        raise QuantisationError(f"{where}: FP8 weight without weight_scale_inv / weight_scale")
    block = fmt.block_size
    if block is None:
        scheme = fmt.scheme_for(module, packed=False)
        block = scheme.block_structure if scheme is not None and scheme.strategy == "block" else None
    return dequantise_fp8(weight, tensors[scale_name], block, dtype=dtype)


def _is_quantised_weight(name: str, tensor: torch.Tensor) -> bool:
    last = name.rpartition(".")[2]
    return last == PACKED_NAME or (last == "weight" and tensor.dtype in FP8_DTYPES)


def dequantise_tensors(tensors: Mapping[str, torch.Tensor], fmt: QuantFormat, *,
                       dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Hub tensors (e.g. one decoder layer) with every quantised projection as a float `...weight` of `dtype`.

    Quantisation companions (scales, shapes, zero points, group indices, activation and KV
    scales) are removed; every other tensor passes through unchanged, in its stored dtype.
    Key order is kept.
    """
    mxfp4 = _mxfp4_pairs(tensors)
    if mxfp4:  # the module's parameter, input-major (see the module docstring)
        companions = {key for pair in mxfp4.values() for key in pair}
        unpacked = {}
        for name, tensor in tensors.items():
            if name not in companions:
                unpacked[name] = tensor
            elif name.endswith(MXFP4_BLOCKS):
                stem = name[:-len(MXFP4_BLOCKS)]
                value = dequantise_mxfp4(tensor, tensors[mxfp4[stem][1]], dtype=dtype)
                unpacked[stem] = value.transpose(-1, -2).contiguous()
        tensors = unpacked
    by_stem: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        stem, _, last = name.rpartition(".")
        by_stem.setdefault(stem, {})[last] = tensor
    stems = {name.rpartition(".")[0] for name, t in tensors.items() if _is_quantised_weight(name, t)}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        stem, _, last = name.rpartition(".")
        if stem in stems and last in ("weight", PACKED_NAME):
            out[f"{stem}.weight" if stem else "weight"] = dequantise(by_stem[stem], fmt, dtype=dtype, module=stem)
        elif last not in QUANT_COMPANIONS:
            out[name] = tensor
    return out


def quantise_tensors(tensors: Mapping[str, torch.Tensor], keys: Iterable[str], scheme: str, *,
                     block: Sequence[int] = (128, 128), group_size: int | None = 32,
                     scale_dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """`tensors` with each of `keys` (2-D `...weight` tensors) quantised, in place in the key order.

    scheme "fp8_block": `weight` float8_e4m3fn + `weight_scale_inv` per `block`;
    "packed_int4" / "packed_int8": `weight_packed`, `weight_scale` per `group_size` columns, `weight_shape`;
    "mxfp4": a fused, input-major expert tensor `X` [E, in, out] (gpt-oss) as `X_blocks` + `X_scales`.
    """
    if scheme not in FORMATS[1:]:
        raise ValueError(f"unknown quantisation {scheme!r}; known: {', '.join(FORMATS[1:])}")
    chosen = set(keys)
    missing = chosen - set(tensors)
    if missing:
        raise KeyError(f"no tensors {sorted(missing)[:3]} to quantise")
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name not in chosen:
            out[name] = tensor
            continue
        if scheme == "mxfp4":
            if tensor.ndim != 3:
                raise ValueError(f"MXFP4 quantises fused 3-D expert tensors, not {name} {tuple(tensor.shape)}")
            out[f"{name}{MXFP4_BLOCKS}"], out[f"{name}{MXFP4_SCALES}"] = quantise_mxfp4(tensor.transpose(-1, -2))
            continue
        stem, _, last = name.rpartition(".")
        if last != "weight" or tensor.ndim != 2:
            raise ValueError(f"only 2-D '...weight' tensors can be quantised, not {name} {tuple(tensor.shape)}")
        if scheme == "fp8_block":
            q, scale = quantise_fp8(tensor, block=block, scale_dtype=scale_dtype)
            out[name], out[f"{stem}.weight_scale_inv"] = q, scale
        else:
            parts = quantise_packed(tensor, num_bits=int(scheme[-1]), group_size=group_size, scale_dtype=scale_dtype)
            out.update({f"{stem}.{local}": t for local, t in parts.items()})
    return out


# -- config.json sections -----------------------------------------------------------------------------------
def fp8_block_config(modules_to_not_convert: Iterable[str], block: Sequence[int] = (128, 128)) -> dict[str, Any]:
    """`quantization_config` of a block-FP8 checkpoint, as the Qwen3 / DeepSeek-V3 FP8 releases write it."""
    return {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [int(b) for b in block],
        "modules_to_not_convert": sorted(modules_to_not_convert),
    }


def packed_int_config(ignore: Iterable[str], *, num_bits: int = 4, group_size: int | None = 32,
                      targets: Sequence[str] = ("Linear",)) -> dict[str, Any]:
    """`quantization_config` of a compressed-tensors pack-quantized, symmetric weight-only checkpoint (W4A16)."""
    return {
        "config_groups": {
            "group_0": {
                "input_activations": None,
                "output_activations": None,
                "targets": list(targets),
                "weights": {
                    "actorder": None,
                    "block_structure": None,
                    "dynamic": False,
                    "group_size": group_size,
                    "num_bits": num_bits,
                    "observer": "minmax",
                    "observer_kwargs": {},
                    "strategy": "group" if group_size else "channel",
                    "symmetric": True,
                    "type": "int",
                },
            }
        },
        "format": "pack-quantized",
        "global_compression_ratio": None,
        "ignore": list(ignore),
        "kv_cache_scheme": None,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
    }


# -- a dequantised copy, for servers without the kernels -------------------------------------------------------
def dequantised_copy(model_dir: str | Path, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write `model_dir` with every quantised projection dequantised (one shard per decoder layer, so one
    layer is in memory at a time), the config without its quantisation section; side files copied.

    For serving a quantised checkpoint where the local vLLM lacks its kernels (vLLM's CPU build needs
    AMX for FP8 blocks and int4 MoE): the answers are the dequantised model's, which the caller records.
    """
    import shutil

    from safetensors.torch import save_file

    from harness.checkpoint.shards import ShardReader
    from harness.util.atomic import make_temp_dir

    source, out = Path(model_dir), Path(out_dir)
    config = json.loads((source / "config.json").read_text())
    reader = ShardReader(source)
    fmt = detect_format(config, reader.tensors)
    if dtype is None:
        stored = str(config.get("dtype") or config.get("torch_dtype") or "bfloat16")
        dtype = getattr(torch, stored) if stored in ("float32", "bfloat16", "float16") else torch.bfloat16
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, f".{out.name}.tmp-")
    try:
        groups: dict[str, list[str]] = {}
        for key in reader.tensors:
            parts = key.split(".")
            group = ".".join(parts[:3]) if len(parts) > 3 and parts[1] == "layers" else "rest"
            groups.setdefault(group, []).append(key)
        weight_map, total = {}, 0
        for number, (_group, keys) in enumerate(sorted(groups.items()), start=1):
            tensors = dequantise_tensors(reader.load_keys(keys), fmt, dtype=dtype) if fmt.is_quantised \
                else reader.load_keys(keys)
            tensors = {k: v.contiguous() for k, v in tensors.items()}
            name = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
            save_file(tensors, str(tmp / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, name))
            total += sum(t.numel() * t.element_size() for t in tensors.values())
        for path in source.iterdir():
            if path.is_file() and not path.name.endswith(".safetensors") and path.name not in (
                    "config.json", "model.safetensors.index.json"):
                shutil.copyfile(path, tmp / path.name)
        config.pop("quantization_config", None)
        config.pop("compression_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
