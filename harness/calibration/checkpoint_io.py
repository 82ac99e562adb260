"""Read a checkpoint's safetensors tensor by tensor, and fingerprint it cheaply."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

_SAMPLE_BYTES = 1 << 20


class ShardReader:
    """Key -> shard lookup over a checkpoint directory (sharded or single-file)."""

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        index = self.model_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.key_to_file = {k: self.model_dir / f for k, f in weight_map.items()}
        else:
            from safetensors import safe_open

            self.key_to_file = {}
            files = sorted(self.model_dir.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"no *.safetensors files in {self.model_dir}")
            for path in files:
                with safe_open(str(path), "pt") as handle:
                    self.key_to_file.update({k: path for k in handle.keys()})

    def load_prefix(self, prefix: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """All tensors whose key starts with prefix (e.g. one decoder layer)."""
        return self.load_keys([k for k in self.key_to_file if k.startswith(prefix)], device)

    def load_keys(self, keys: list[str], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for key in keys:
            by_file.setdefault(self.key_to_file[key], []).append(key)
        out: dict[str, torch.Tensor] = {}
        for path, keys in by_file.items():
            with safe_open(str(path), "pt", device=str(device)) as handle:
                for key in keys:
                    out[key] = handle.get_tensor(key)
        return out


def model_fingerprint(model: str | Path, revision: str | None = None) -> dict:
    """Identity of a checkpoint for cache keys, without hashing hundreds of GB.

    Local directory: config.json's and the tokenizer files' hash, and per tensor file its size plus a hash of its
    header and of three 1 MiB samples (start, middle, end). Hub id: the id and revision.
    """
    path = Path(model)
    if not path.is_dir():
        return {"hub_id": str(model), "revision": revision or "main"}
    digest = hashlib.sha256()
    digest.update((path / "config.json").read_bytes())
    # The tokenizer and chat template change the calibration tokens, so they are identity too.
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "tokenizer.model"):
        if (path / name).is_file():
            digest.update(name.encode() + (path / name).read_bytes())
    for shard in sorted(path.glob("*.safetensors")):
        size = shard.stat().st_size
        digest.update(f"{shard.name}:{size}".encode())
        with open(shard, "rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            digest.update(handle.read(min(header_len, 100 << 20)))
            for offset in (0, size // 2, max(size - _SAMPLE_BYTES, 0)):
                handle.seek(offset)
                digest.update(handle.read(_SAMPLE_BYTES))
    return {"local_checkpoint_sha256": digest.hexdigest()}
