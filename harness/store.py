"""Content-addressed stage outputs under the sweep's work directory.

Every stage output lives at `<root>/<stage>/<key>/`, where the key is a versioned hash
of only the settings that change that output (inspect_ai-style), so re-running a sweep
does only missing work and a killed run resumes. A stage is done when its `done.json`
exists; it is written last and atomically, so a half-written output is never mistaken
for a finished one. `events.jsonl` is an append-only journal of computed stages (what
tests count) and `failures/` keeps one record per failed job with its log. Nothing written
here holds a secret (API keys, tokens: `harness.redaction`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from harness.atomic import atomic_write
from harness.redaction import redact

# Bump when the layout or the meaning of a stage's settings changes: every key changes with it.
STORE_VERSION = 1
STAGES = ("calibration", "plan", "checkpoint", "eval")


def stage_key(stage: str, settings: dict[str, Any]) -> str:
    """Versioned hash of the settings that determine a stage's output."""
    payload = json.dumps({"store_version": STORE_VERSION, "stage": stage, "settings": settings},
                         sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def write_json(path: Path, data: Any) -> Path:
    """Atomically write `data` as JSON, secrets redacted (harness.redaction)."""
    text = redact(json.dumps(data, indent=1, sort_keys=True, default=str)) + "\n"
    return atomic_write(path, lambda p: Path(p).write_text(text))


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def is_done(self, stage: str, key: str) -> bool:
        return (self.dir(stage, key) / "done.json").is_file()

    def mark_done(self, stage: str, key: str, meta: dict[str, Any] | None = None) -> None:
        write_json(self.dir(stage, key) / "done.json", {"stage": stage, "key": key, **(meta or {})})
        self.clear_failure(stage, key)

    def done_meta(self, stage: str, key: str) -> dict[str, Any]:
        return json.loads((self.dir(stage, key) / "done.json").read_text())

    def reset(self, stage: str, key: str) -> None:
        """Forget an output (for --force): remove its done marker first, then its files."""
        target = self.dir(stage, key)
        (target / "done.json").unlink(missing_ok=True)
        shutil.rmtree(target, ignore_errors=True)

    # -- journal -------------------------------------------------------------------------
    def event(self, kind: str, **fields: Any) -> None:
        line = redact(json.dumps({"event": kind, "time": time.time(), **fields}, sort_keys=True, default=str))
        with open(self.root / "events.jsonl", "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        path = self.root / "events.jsonl"
        if not path.is_file():
            return []
        found = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if kind is None or record.get("event") == kind:
                found.append(record)
        return found

    # -- failures ------------------------------------------------------------------------
    def failure_path(self, stage: str, key: str) -> Path:
        return self.root / "failures" / f"{stage}-{key}.json"

    def record_failure(self, stage: str, key: str, job: str, error: BaseException, log: Path | None) -> Path:
        record = {
            "stage": stage, "key": key, "job": job, "error": f"{type(error).__name__}: {error}",
            "traceback": "".join(traceback.format_exception(error)), "log": str(log) if log else None,
            "time": time.time(),
        }
        self.event("failed", stage=stage, key=key, job=job, error=record["error"])
        return write_json(self.failure_path(stage, key), record)

    def clear_failure(self, stage: str, key: str) -> None:
        self.failure_path(stage, key).unlink(missing_ok=True)

    def failures(self) -> list[dict[str, Any]]:
        folder = self.root / "failures"
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
