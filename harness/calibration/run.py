"""Calibration drivers: the whole model at once, or one decoder layer at a time.

Both feed the same token rows through the same observer, so they give the same
statistics; the sequential driver keeps only one decoder layer's weights plus the
cached hidden states in memory, for models larger than memory.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.archs import get_arch
from harness.archs.base import MoEArch
from harness.calibration.checkpoint_io import ShardReader, model_fingerprint
from harness.calibration.observer import Observer
from harness.calibration.statistics import STATS_FORMAT_VERSION, CalibrationStatistics, LayerStatistics


def _batches(input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, input_ids.shape[0], batch_size):
        yield input_ids[start:start + batch_size], attention_mask[start:start + batch_size]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", disable=not enabled, leave=False)


def calibrate_loaded(model: nn.Module, arch: MoEArch, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     *, batch_size: int = 8, mean_out: bool = False, router_similarity: bool = False,
                     progress: bool = False) -> dict[int, LayerStatistics]:
    """Statistics of a model already in memory."""
    device = next(model.parameters()).device
    n_batches = -(-input_ids.shape[0] // batch_size)
    with Observer(model, arch, mean_out=mean_out, router_similarity=router_similarity) as observer, \
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
                         batch_size: int = 8, mean_out: bool = False, router_similarity: bool = False,
                         dtype: torch.dtype = torch.float32, device: str = "cpu",
                         progress: bool = False) -> dict[int, LayerStatistics]:
    """Statistics with one decoder layer in memory at a time (plus cached hidden states)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = get_arch(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    inner = model.model
    reader = ShardReader(model_dir)
    embed_key = "model.embed_tokens.weight"
    inner.embed_tokens.to_empty(device=device)
    inner.embed_tokens.weight.data.copy_(reader.load_prefix(embed_key)[embed_key])
    with torch.device(device):  # recompute inv_freq (a meta tensor so far)
        inner.rotary_emb = type(inner.rotary_emb)(config=inner.config)
    layers = arch.decoder_layers(model)
    moe_layers = {layer.index: layer for layer in arch.moe_layers(model)}
    observer = Observer(None, arch, mean_out=mean_out, router_similarity=router_similarity,
                        layers=list(moe_layers.values()), hidden_size=config.hidden_size)

    batches = list(_batches(input_ids, attention_mask, batch_size))
    hidden: list[torch.Tensor] = []
    layer_kwargs: list[list[dict[str, Any]]] = []
    with torch.no_grad():
        for ids, mask in batches:
            first, kwargs = _layer_inputs(model, layers, ids.to(device), mask.to(device))
            hidden.append(first)
            layer_kwargs.append(kwargs)
        with _progress(len(layers), "calibrating (sequential)", progress) as bar:
            for index, layer in enumerate(layers):
                prefix = f"model.layers.{index}."
                layer.to_empty(device=device)
                layer.load_state_dict(arch.hub_to_module_state(reader.load_prefix(prefix, device), prefix),
                                      strict=True)
                if index in moe_layers:
                    observer.attach([moe_layers[index]])
                for b, (_, mask) in enumerate(batches):
                    observer.set_mask(mask)
                    out = layer(hidden[b], **layer_kwargs[b][index])
                    hidden[b] = out[0] if isinstance(out, tuple) else out
                observer.detach()
                layer.to("meta")  # free this layer's weights before loading the next
                bar.update()
    return observer.stats


def calibration_key(model_fp: dict, data_fp: dict, *, mean_out: bool, router_similarity: bool) -> str:
    """Content hash of exactly what changes the statistics (not batch size, not device)."""
    payload = {
        "stats_format": STATS_FORMAT_VERSION,
        "model": model_fp,
        "data": data_fp,
        "mean_out": mean_out,
        "router_similarity": router_similarity,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def run_calibration(model_dir: str | Path, spec, out_root: str | Path, *, batch_size: int = 8,
                    mean_out: bool = False, router_similarity: bool = False, sequential: bool = False,
                    device: str = "cpu", progress: bool = True, force: bool = False
                    ) -> tuple[Path, CalibrationStatistics]:
    """Calibrate (or reuse the cached result) and return (directory, statistics)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import harness
    from harness.calibration.data import build_calibration_batch, spec_fingerprint

    model_fp = model_fingerprint(model_dir)
    data_fp = spec_fingerprint(spec)
    key = calibration_key(model_fp, data_fp, mean_out=mean_out, router_similarity=router_similarity)
    out_dir = Path(out_root) / key
    if (out_dir / "manifest.json").is_file() and not force:
        return out_dir, CalibrationStatistics.load(out_dir)

    arch = get_arch(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = build_calibration_batch(spec, tokenizer)
    started = time.monotonic()
    if sequential:
        stats = calibrate_sequential(model_dir, batch.input_ids, batch.attention_mask, batch_size=batch_size,
                                     mean_out=mean_out, router_similarity=router_similarity,
                                     device=device, progress=progress)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").to(device).eval()
        stats = calibrate_loaded(model, arch, batch.input_ids, batch.attention_mask, batch_size=batch_size,
                                 mean_out=mean_out, router_similarity=router_similarity, progress=progress)
    manifest = {
        "key": key,
        "stats_format": STATS_FORMAT_VERSION,
        "model": str(model_dir),
        "model_fingerprint": model_fp,
        "family": arch.model_type,
        "num_experts": arch.num_experts,
        "top_k": arch.top_k,
        "n_group": arch.n_group,
        "moe_layers": sorted(stats),
        "data": data_fp,
        "samples": int(batch.input_ids.shape[0]),
        "length": int(batch.input_ids.shape[1]),
        "tokens": int(batch.attention_mask.sum()),
        "mean_out": mean_out,
        "router_similarity": router_similarity,
        # Not part of the key: how the numbers were produced.
        "run": {"sequential": sequential, "batch_size": batch_size, "device": device,
                "seconds": round(time.monotonic() - started, 3), "harness_version": harness.__version__,
                "torch": torch.__version__, "python": platform.python_version()},
    }
    result = CalibrationStatistics(stats, manifest)
    result.save(out_dir)
    return out_dir, result
