"""A checkpoint's identity for cache keys, without hashing hundreds of GB."""

from __future__ import annotations

import hashlib
from pathlib import Path

_SAMPLE_BYTES = 1 << 20


def model_fingerprint(model: str | Path, revision: str | None = None) -> dict:
    """Identity of a checkpoint for cache keys.

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
