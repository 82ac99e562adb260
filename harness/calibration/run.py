"""Calibration drivers: the whole model at once, or one decoder layer at a time.

Both feed the same token rows through the same observer, so they give the same
statistics; the sequential driver keeps only one decoder layer's weights plus the
cached hidden states in memory, for models larger than memory. Either runs where
`device` says: every visible GPU (a model too large for one is spread over several),
one GPU, or the CPU. Quantised checkpoints (FP8 blocks, compressed-tensors int4) are
dequantised layer by layer into the calibration dtype for the observer.

The stage's key and directory belong to the store (harness.sweep.store): `calibration_settings`
says what the statistics depend on, the sweep's calibration stage (harness.sweep.stages.calibrate)
and `python -m harness.calibrate` store them once per key.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.archs import get_arch, read_config
from harness.archs.base import MoEArch
from harness.calibration.observer import Observer
from harness.calibration.statistics import STATS_FORMAT_VERSION, CalibrationStatistics, LayerStatistics
from harness.checkpoint.shards import ShardReader

log = logging.getLogger("harness.calibration")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CalibrationDeviceError(ValueError):
    """The requested device is not there; the message says what is."""


def _batches(input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, input_ids.shape[0], batch_size):
        yield input_ids[start:start + batch_size], attention_mask[start:start + batch_size]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", disable=not enabled, leave=False)


def calibrate_loaded(model: nn.Module, arch: MoEArch, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     *, batch_size: int = 8, extras: Iterable[str] = (),
                     routing: str = "model", progress: bool = False) -> dict[int, LayerStatistics]:
    """Statistics of a model already in memory (on one device, or spread over several)."""
    device = model.get_input_embeddings().weight.device
    n_batches = -(-input_ids.shape[0] // batch_size)
    with Observer(model, arch, extras=frozenset(extras), routing=routing) as observer, \
            torch.no_grad(), _progress(n_batches, "calibrating", progress) as bar:
        for ids, mask in _batches(input_ids, attention_mask, batch_size):
            observer.set_mask(mask)
            model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            bar.update()
    return observer.stats


class _StopForward(Exception):
    pass


def _layer_inputs(model: nn.Module, layers: nn.ModuleList, ids: torch.Tensor, mask: torch.Tensor
                  ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Run the model's own forward up to the decoder layers and record, for every layer,
    the exact keyword arguments (attention mask, position ids, rotary embeddings) that the
    full forward passes it. Layers are replaced by recorders, so nothing heavy runs."""
    captured: list[dict[str, Any]] = [{} for _ in layers]
    first_hidden: list[torch.Tensor] = []

    def recorder(index: int):
        def forward(hidden_states, *args, **kwargs):
            if args:
                raise RuntimeError("decoder layers are expected to take keyword arguments after hidden_states")
            if index == 0:
                first_hidden.append(hidden_states)
            captured[index] = kwargs
            if index == len(layers) - 1:
                raise _StopForward
            return hidden_states
        return forward

    for index, layer in enumerate(layers):
        layer.forward = recorder(index)
    try:
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        for layer in layers:
            del layer.forward
    return first_hidden[0], captured


def calibrate_sequential(model_dir: str | Path, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                         batch_size: int = 8, extras: Iterable[str] = (),
                         dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                         routing: str = "model", progress: bool = False) -> dict[int, LayerStatistics]:
    """Statistics with one decoder layer in memory at a time (plus the hidden states).

    The layer runs on `device`; the hidden states stay there too when they fit in half of its
    free memory, else in host memory (moved over one batch at a time).
    """
    device = torch.device(device)
    arch = get_arch(model_dir)
    model = _empty_model(model_dir, dtype)
    model.eval()
    config = model.config
    inner = model.model
    weights = _LayerWeights(model_dir, dtype)
    embedding, embed_key = model.get_submodule(arch.embedding_path), arch.embedding_key
    embedding.to_empty(device=device)
    embedding.weight.data.copy_(weights.load(embed_key)[embed_key])
    if hasattr(inner, "rotary_emb"):  # Kimi-Linear has none (no positional encoding)
        with torch.device(device):  # recompute inv_freq (a meta tensor so far)
            inner.rotary_emb = type(inner.rotary_emb)(config=inner.config)
    layers = arch.decoder_layers(model)
    moe_layers = {layer.index: layer for layer in arch.moe_layers(model)}
    hidden_size = config.get_text_config().hidden_size  # a multimodal wrapper's text settings
    observer = Observer(None, arch, extras=frozenset(extras),
                        layers=list(moe_layers.values()), hidden_size=arch.expert_width, routing=routing)

    batches = list(_batches(input_ids, attention_mask, batch_size))
    home = _activation_home(device, input_ids.numel() * hidden_size * torch.finfo(dtype).bits // 8)
    hidden: list[torch.Tensor] = []
    layer_kwargs: list[list[dict[str, Any]]] = []
    with torch.no_grad():
        for ids, mask in batches:
            first, kwargs = _layer_inputs(model, layers, ids.to(device), mask.to(device))
            memo: dict[int, Any] = {}
            hidden.append(first.to(home))
            layer_kwargs.append([_moved(k, home, memo) for k in kwargs])
        with _progress(len(layers), "calibrating (sequential)", progress) as bar:
            for index, layer in enumerate(layers):
                prefix = arch.layer_prefix(index)
                layer.to_empty(device=device)
                layer.load_state_dict(arch.hub_to_module_state(weights.load(prefix, device), prefix), strict=True)
                if index in moe_layers:
                    observer.attach([moe_layers[index]])
                for b, (_, mask) in enumerate(batches):
                    observer.set_mask(mask)
                    memo = {}
                    kwargs = _moved(layer_kwargs[b][index], device, memo)
                    out = layer(hidden[b].to(device), **kwargs)
                    hidden[b] = (out[0] if isinstance(out, tuple) else out).to(home)
                observer.detach()
                layer.to("meta")  # free this layer's weights before loading the next
                bar.update()
    return observer.stats


def _activation_home(device: torch.device, nbytes: int) -> torch.device:
    """Where the sequential driver keeps the hidden states between layers."""
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes <= free // 2:
        return device
    log.info("the hidden states (%.1f GiB) do not fit beside a layer on %s (%.1f GiB free): kept in host memory",
             nbytes / 2**30, device, free / 2**30)
    return torch.device("cpu")


def _moved(value: Any, device: torch.device, memo: dict[int, Any]) -> Any:
    """`value` with every tensor in it on `device`; a tensor shared by several layers is moved once."""
    if isinstance(value, torch.Tensor):
        if value.device == device:
            return value
        if id(value) not in memo:
            memo[id(value)] = value.to(device)
        return memo[id(value)]
    if isinstance(value, dict):
        return {k: _moved(v, device, memo) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_moved(v, device, memo) for v in value)
    return value


class _LayerWeights:
    """A checkpoint's tensors by key prefix, dequantised into `dtype` when the checkpoint is quantised."""

    def __init__(self, model_dir: str | Path, dtype: torch.dtype):
        from harness.checkpoint.quantisation import detect_format

        self.reader = ShardReader(model_dir)
        self.format = detect_format(read_config(model_dir), self.reader.tensors)
        self.dtype = dtype

    def load(self, prefix: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        return self._dequantised(self.reader.load_prefix(prefix, device))

    def load_outside(self, prefix: str) -> dict[str, torch.Tensor]:
        """Every tensor whose key does not start with `prefix` (embeddings, final norm, head)."""
        keys = [k for k in self.reader.tensors if not k.startswith(prefix)]
        return self._dequantised(self.reader.load_keys(keys))

    def _dequantised(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from harness.checkpoint.quantisation import dequantise_tensors

        return dequantise_tensors(tensors, self.format, dtype=self.dtype) if self.format.is_quantised else tensors


def _empty_model(model_dir: str | Path, dtype: torch.dtype) -> nn.Module:
    """The model's modules on the meta device, unquantised: the calibration drivers load (dequantised) weights
    into it one decoder layer at a time."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def resolve_devices(device: str) -> list[torch.device]:
    """The devices `device` names: "auto" = every visible GPU, else the CPU (said in the log)."""
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = [torch.device("cuda", i) for i in range(visible)]
    if device == "auto":
        if not gpus:
            log.info("calibration.device auto: no GPU is visible, calibrating on the CPU")
            return [torch.device("cpu")]
        log.info("calibration.device auto: calibrating on %d GPU(s)", len(gpus))
        return gpus
    if device == "cpu":
        return [torch.device("cpu")]
    if not gpus:
        raise CalibrationDeviceError(f"calibration.device is {device!r} but no GPU is visible here "
                                     "(torch.cuda.is_available() is False); use auto or cpu")
    if device == "cuda":
        return gpus
    chosen = torch.device(device)
    if chosen.index is None or chosen.index >= visible:
        raise CalibrationDeviceError(f"calibration.device is {device!r} but only {visible} GPU(s) are visible")
    return [chosen]


def resolve_dtype(name: str, config: dict) -> str:
    """The calibration dtype's name: "auto" is the checkpoint's dtype (bfloat16 for quantised weights)."""
    from harness.checkpoint.quantisation import detect_format

    if name != "auto":
        if name not in DTYPES:
            raise ValueError(f"calibration dtype must be auto or one of {', '.join(DTYPES)}, got {name!r}")
        return name
    if detect_format(config).is_quantised:
        return "bfloat16"
    text = config.get("text_config", config)
    stored = str(text.get("dtype") or text.get("torch_dtype") or config.get("torch_dtype") or "float32")
    return stored if stored in DTYPES else "float32"


def load_model(model_dir: str | Path, dtype: torch.dtype, devices: list[torch.device]) -> nn.Module:
    """The whole model for normal-mode calibration: on the CPU, on one GPU, or spread over several GPUs
    (accelerate's device map, GPUs only: a model that does not fit them needs sequential mode)."""
    from transformers import AutoModelForCausalLM

    from harness.checkpoint.quantisation import detect_format

    if detect_format(read_config(model_dir)).is_quantised:
        return _load_dequantised(model_dir, dtype, devices)
    if devices == [torch.device("cpu")]:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    if len(devices) == 1:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map={"": devices[0]}).eval()
    budget = {d.index: torch.cuda.mem_get_info(d)[0] for d in devices}
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map="auto",
                                                max_memory=budget).eval()


def _load_dequantised(model_dir: str | Path, dtype: torch.dtype, devices: list[torch.device]) -> nn.Module:
    """A quantised checkpoint as a plain model in `dtype`, dequantised one decoder layer at a time;
    decoder layers are dealt out to the devices in contiguous runs."""
    arch = get_arch(model_dir)
    model = _empty_model(model_dir, dtype)
    config = model.config
    weights = _LayerWeights(model_dir, dtype)
    layers = arch.decoder_layers(model)
    per_device = -(-len(layers) // len(devices))
    first, last = devices[0], devices[-1]
    for index, layer in enumerate(layers):
        device = devices[index // per_device]
        prefix = arch.layer_prefix(index)
        layer.to_empty(device=device)
        layer.load_state_dict(arch.hub_to_module_state(weights.load(prefix, device), prefix), strict=True)
    layers_prefix = f"{arch.layers_path}."
    rest = weights.load_outside(layers_prefix)
    for name, module in model.named_children():
        if name != "model":
            module.to_empty(device=last)
    inner = model.model
    for name, module in inner.named_children():
        if name != "layers":
            module.to_empty(device=last if name == "norm" else first)
    # Not strict: the layers are loaded already, and stored MTP layers are not part of the forward.
    missing = [k for k in model.load_state_dict(rest, strict=False).missing_keys if not k.startswith(layers_prefix)]
    if config.tie_word_embeddings:
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing:
        raise RuntimeError(f"{model_dir}: tensors missing from the checkpoint: {missing[:5]}")
    if hasattr(inner, "rotary_emb"):
        with torch.device(first):  # inv_freq is computed, not stored
            inner.rotary_emb = type(inner.rotary_emb)(config=inner.config)
    if len(devices) > 1:
        from accelerate import dispatch_model

        device_map = {arch.embedding_path: first, "model.norm": last, "lm_head": last}
        if hasattr(inner, "rotary_emb"):
            device_map["model.rotary_emb"] = first
        device_map.update({f"{arch.layers_path}.{i}": devices[i // per_device] for i in range(len(layers))})
        model = dispatch_model(model, device_map=device_map)
    return model.eval()


def calibration_settings(identity: dict[str, Any], data_fingerprint: dict[str, Any], *, extras: Iterable[str],
                         dtype: str) -> dict[str, Any]:
    """Exactly what the statistics depend on (not batch size, device or mode): the stage's key settings."""
    return {
        "stats_format": STATS_FORMAT_VERSION,
        "model": identity,
        "data": data_fingerprint,
        "extras": sorted(extras),  # the optional statistics (harness.calibration.statistics.EXTRAS)
        "dtype": dtype,
    }


def calibration_settings_for(source, spec, *, extras: Iterable[str], dtype: str) -> dict[str, Any]:
    """calibration_settings of a harness.checkpoint.hub.ModelSource (reads only its config, never its weights)."""
    from harness.calibration.data import spec_fingerprint

    return calibration_settings(source.identity, spec_fingerprint(spec), extras=extras,
                                dtype=resolve_dtype(dtype, read_config(source.metadata_dir)))


def calibrate(model_dir: str | Path, spec, *, extras: Iterable[str] = (),
              sequential: bool = False, device: str | None = None, dtype: str = "auto", batch_size: int = 8,
              progress: bool = True) -> CalibrationStatistics:
    """Tokenise the calibration set and record the statistics (no caching: the callers store it under its key)."""
    from transformers import AutoTokenizer

    import harness
    from harness.calibration.data import build_calibration_batch, spec_fingerprint
    from harness.checkpoint.quantisation import detect_format

    config = read_config(model_dir)
    arch = get_arch(config)
    dtype_name = resolve_dtype(dtype, config)
    torch_dtype = DTYPES[dtype_name]
    devices = resolve_devices(device or spec.device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = build_calibration_batch(spec, tokenizer)  # data problems surface before the model is loaded
    started = time.monotonic()
    if sequential:
        stats = calibrate_sequential(model_dir, batch.input_ids, batch.attention_mask, batch_size=batch_size,
                                     extras=extras, dtype=torch_dtype,
                                     device=devices[0], routing=spec.routing, progress=progress)
    else:
        model = load_model(model_dir, torch_dtype, devices)
        stats = calibrate_loaded(model, arch, batch.input_ids, batch.attention_mask, batch_size=batch_size,
                                 extras=extras, routing=spec.routing,
                                 progress=progress)
        del model
    manifest = {
        "stats_format": STATS_FORMAT_VERSION,
        "model": str(model_dir),
        "family": arch.model_type,
        "quantisation": detect_format(config).name,
        "num_experts": arch.num_experts,
        "top_k": arch.top_k,
        "n_group": arch.n_group,
        "moe_layers": sorted(stats),
        "data": spec_fingerprint(spec),
        "samples": int(batch.input_ids.shape[0]),
        "length": int(batch.input_ids.shape[1]),
        "tokens": int(batch.attention_mask.sum()),
        "extras": sorted(extras),
        "routing": spec.routing,
        "dtype": dtype_name,
        # Not part of the key: how the numbers were produced.
        "run": {"sequential": sequential, "batch_size": batch_size, "devices": [str(d) for d in devices],
                "seconds": round(time.monotonic() - started, 3), "harness_version": harness.__version__,
                "torch": torch.__version__, "python": platform.python_version()},
    }
    return CalibrationStatistics(stats, manifest)
