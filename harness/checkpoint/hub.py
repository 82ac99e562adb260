"""Where a sweep's model comes from: a local directory, or a hub id pinned to a commit.

A hub model is keyed by the commit sha its revision points to when the sweep starts, so a
branch that moved never silently reuses results computed from other weights. Everything
goes through `huggingface_hub` and its cache: offline (`HF_HUB_OFFLINE=1`, or
`HubAccess(offline=True)`) only the cache is read; online the hub answers which commit a
revision is, and the weights are downloaded into the cache when a stage first needs them.
A model that is neither cached nor reachable is a validation problem, reported before any
work with what to do about it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

log = logging.getLogger("harness.checkpoint.hub")

_SHA = re.compile(r"^[0-9a-f]{40}$")
# Small files every stage may read before the weights are needed (config, tokenizer, index).
METADATA_PATTERNS = ["*.json", "*.jinja", "*.model", "*.txt", "*.tiktoken", "*.py"]


class ModelUnavailableError(ValueError):
    """A model cannot be found locally, in the cache or on the hub; the message says what to do."""


@dataclass(frozen=True)
class HubAccess:
    """Which Hugging Face cache to use and whether the hub may be asked.

    `None` means huggingface_hub's own settings (HF_HUB_CACHE / HF_HOME, HF_HUB_OFFLINE).
    """

    cache_dir: Path | None = None
    offline: bool | None = None

    @property
    def is_offline(self) -> bool:
        if self.offline is not None:
            return self.offline
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)

    @property
    def cache_path(self) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)


def looks_local(path: str) -> bool:
    """A path written as one (absolute, ./, ../, ~) is never taken for a hub id."""
    return Path(path).is_absolute() or path.startswith((".", "~"))


@dataclass
class ModelSource:
    """One model of a sweep, resolved: a local directory, or a hub id at a commit."""

    path: str
    local_dir: Path | None = None
    hub_id: str | None = None
    revision: str | None = None
    sha: str | None = None
    access: HubAccess = field(default_factory=HubAccess)

    @property
    def is_hub(self) -> bool:
        return self.hub_id is not None

    @cached_property
    def identity(self) -> dict[str, Any]:
        """What stage keys are made of: the commit for a hub model, a content fingerprint for a directory."""
        if self.is_hub:
            return {"hub_id": self.hub_id, "sha": self.sha}
        from harness.checkpoint.identity import model_fingerprint

        return model_fingerprint(self.local_dir)

    @cached_property
    def metadata_dir(self) -> Path:
        """A directory with config.json and the tokenizer files (the weights may not be there yet)."""
        if not self.is_hub:
            return self.local_dir
        return self._snapshot(allow_patterns=METADATA_PATTERNS)

    def directory(self) -> Path:
        """The whole checkpoint on local disk, downloading what the cache lacks."""
        if not self.is_hub:
            return self.local_dir
        folder = self._snapshot(allow_patterns=None)
        missing = missing_weight_files(folder)
        if missing:
            raise ModelUnavailableError(
                f"{self.hub_id} at {self.sha}: the cached snapshot {folder} lacks {len(missing)} weight file(s) "
                f"(e.g. {missing[0]}); {_fetch_advice(self.hub_id, self.access)}")
        return folder

    def _snapshot(self, allow_patterns: list[str] | None) -> Path:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(self.hub_id, revision=self.sha, cache_dir=self.access.cache_dir,
                                      local_files_only=self.access.is_offline, allow_patterns=allow_patterns))

    def describe(self) -> str:
        return f"{self.hub_id}@{self.sha[:12]}" if self.is_hub else str(self.local_dir)


def missing_weight_files(folder: Path) -> list[str]:
    """Weight files the checkpoint's index names (or, without an index, none at all) that are absent."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [n for n in names if not (folder / n).is_file()]
    return [] if any(folder.glob("*.safetensors")) else ["*.safetensors"]


def _fetch_advice(hub_id: str, access: HubAccess) -> str:
    where = f"HF_HUB_CACHE={access.cache_path}"
    if access.is_offline:
        return (f"download it where there is internet (`hf download {hub_id}` with {where}) or unset "
                "HF_HUB_OFFLINE so the sweep can download it")
    return f"check the id and your network, or download it first (`hf download {hub_id}` with {where})"


def resolve(path: str, revision: str | None, base: Path, access: HubAccess | None = None) -> ModelSource:
    """Resolve a sweep's `path` (+ `revision`) without downloading weights.

    Raises ModelUnavailableError with the fix when the model cannot be found.
    """
    access = access or HubAccess()
    local = Path(path).expanduser()
    local = local if local.is_absolute() else base / local
    if local.is_dir():
        return ModelSource(path=path, local_dir=local, access=access)
    if looks_local(path):
        raise ModelUnavailableError(f"local model directory {local} does not exist")
    sha = _resolve_sha(path, revision, access)
    source = ModelSource(path=path, hub_id=path, revision=revision, sha=sha, access=access)
    try:
        folder = source.metadata_dir
    except Exception as exc:  # noqa: BLE001 — any failure to get the config is reported the same way
        raise ModelUnavailableError(
            f"{path} at {sha}: config.json and the tokenizer are not available ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); {_fetch_advice(path, access)}") from None
    if not (folder / "config.json").is_file():
        raise ModelUnavailableError(f"{path} at {sha} has no config.json; is it a transformers checkpoint?")
    return source


def _cached_sha(hub_id: str, revision: str, access: HubAccess) -> str | None:
    """The commit the cache's refs/<revision> names (or the revision itself when it is a cached commit)."""
    repo = access.cache_path / f"models--{hub_id.replace('/', '--')}"
    if _SHA.match(revision):
        return revision if (repo / "snapshots" / revision).is_dir() else None
    ref = repo / "refs" / revision
    if not ref.is_file():
        return None
    sha = ref.read_text().strip()
    return sha if (repo / "snapshots" / sha).is_dir() else None


def _resolve_sha(hub_id: str, revision: str | None, access: HubAccess) -> str:
    revision = revision or "main"
    if access.is_offline:
        sha = _cached_sha(hub_id, revision, access)
        if sha is None:
            raise ModelUnavailableError(
                f"hub model {hub_id} (revision {revision}) is not in the Hugging Face cache at "
                f"{access.cache_path}, and offline mode (HF_HUB_OFFLINE=1) forbids asking the hub; "
                f"{_fetch_advice(hub_id, access)}")
        return sha
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return HfApi().model_info(hub_id, revision=revision).sha
    except GatedRepoError:
        raise ModelUnavailableError(f"hub model {hub_id} is gated: accept its licence on huggingface.co and set "
                                    "HF_TOKEN (or run `hf auth login`)") from None
    except RevisionNotFoundError:
        raise ModelUnavailableError(f"hub model {hub_id} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise ModelUnavailableError(f"hub model {hub_id} does not exist (or is private: set HF_TOKEN)") from None
    except Exception as exc:  # noqa: BLE001 — network trouble: the cache may still have it
        sha = _cached_sha(hub_id, revision, access)
        if sha is None:
            raise ModelUnavailableError(
                f"hub model {hub_id} (revision {revision}) is not cached at {access.cache_path} and the hub "
                f"cannot be reached ({type(exc).__name__}); {_fetch_advice(hub_id, access)}") from None
        log.warning("the hub cannot be reached (%s); using the cached %s at %s", type(exc).__name__, hub_id, sha)
        return sha


def add_to_cache(cache_dir: str | Path, hub_id: str, folder: str | Path, revision: str = "main",
                 sha: str | None = None) -> str:
    """Put a checkpoint folder into a Hugging Face cache as `hub_id` at commit `sha`, and point
    refs/<revision> at it; returns the sha. Laid out as huggingface_hub lays out downloads
    (blobs named by content, snapshot entries linking to them), so the rehearsal and the tests
    resolve stand-ins through exactly the code that resolves real hub models."""
    import hashlib
    import os
    import shutil

    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digests = {}
    for path in files:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(chunk)
        digests[path] = digest.hexdigest()
    if sha is None:  # a commit id made from the content, as stable as a real one
        listing = "".join(f"{p.relative_to(folder)}:{d}\n" for p, d in digests.items())
        sha = hashlib.sha1(listing.encode()).hexdigest()
    repo = Path(cache_dir) / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / sha
    for path, digest in digests.items():
        blob = repo / "blobs" / digest
        if not blob.exists():
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, blob)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(sha)
    return sha
