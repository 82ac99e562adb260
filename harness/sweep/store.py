"""Content-addressed stage outputs under the sweep's work directory.

Every stage output lives at `<root>/<stage>/<key>/`, where the key is a versioned hash
of only the settings that change that output (inspect_ai-style), so re-running a sweep
does only missing work and a killed run resumes. A stage is done when its `done.json`
exists; it is written last and atomically, so a half-written output is never mistaken
for a finished one. `events.jsonl` is an append-only journal of computed stages (what
tests count) and `failures/` keeps one record per failed job with its log. Nothing written
here holds a secret (API keys, tokens: `harness.util.redaction`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.util.atomic import atomic_write
from harness.util.redaction import redact

# Bump when the layout or the meaning of a stage's settings changes: every key changes with it.
STORE_VERSION = 1


def stage_key(stage: str, settings: dict[str, Any]) -> str:
    """Versioned hash of the settings that determine a stage's output."""
    payload = json.dumps({"store_version": STORE_VERSION, "stage": stage, "settings": settings},
                         sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def write_json(path: Path, data: Any) -> Path:
    """Atomically write `data` as JSON, secrets redacted (harness.util.redaction)."""
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

    def mark_done(self, stage: str, key: str, meta: dict[str, Any] | None = None,
                  settings: dict[str, Any] | None = None) -> None:
        """Written last: the stage's output is complete. `settings` are what was hashed into `key`."""
        record = {"stage": stage, "key": key, **(meta or {})}
        if settings is not None:
            record["settings"] = settings
        write_json(self.dir(stage, key) / "done.json", record)
        self.clear_failure(stage, key)

    # -- retention (`checkpoints: evict_after_eval`) --------------------------------------------
    def is_evicted(self, stage: str, key: str) -> bool:
        """Done once, its files since deleted to save disk (the done record and settings stay)."""
        return (self.dir(stage, key) / "evicted.json").is_file()

    def is_available(self, stage: str, key: str) -> bool:
        """Done and its files present."""
        return self.is_done(stage, key) and not self.is_evicted(stage, key)

    def evict(self, stage: str, key: str, folder: str = "model", **meta: Any) -> int:
        """Delete a done output's files (`folder` under its directory), keeping its done record: the record of
        the eviction is written first, so a kill half-way leaves an output marked evicted, never one that
        looks whole. Returns the bytes freed."""
        target = self.dir(stage, key) / folder
        files = {str(p.relative_to(target)): p.stat().st_size for p in sorted(target.rglob("*")) if p.is_file()} \
            if target.is_dir() else {}
        freed = sum(files.values())
        write_json(self.dir(stage, key) / "evicted.json", {"stage": stage, "key": key, "time": time.time(),
                                                           "bytes": freed, "files": files, **meta})
        shutil.rmtree(target, ignore_errors=True)
        self.event("evicted", stage=stage, key=key, bytes=freed, **meta)
        return freed

    def eviction(self, stage: str, key: str) -> dict[str, Any]:
        return json.loads((self.dir(stage, key) / "evicted.json").read_text())

    def restored(self, stage: str, key: str) -> None:
        """The output was written again: it is no longer evicted."""
        (self.dir(stage, key) / "evicted.json").unlink(missing_ok=True)

    def done_meta(self, stage: str, key: str) -> dict[str, Any]:
        return json.loads((self.dir(stage, key) / "done.json").read_text())

    @contextlib.contextmanager
    def claim(self, stage: str, key: str, wait: bool = False) -> Iterator[bool]:
        """Hold the one claim on (stage, key) while computing it: yields False when another process holds it
        (with `wait`, blocks until it is free). An flock, released by the kernel when its holder dies, so a
        killed worker never leaves a stale claim; it works across the nodes of a shared filesystem that
        supports locks (NFSv4, Lustre, GPFS)."""
        path = self.root / "locks" / f"{stage}-{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    def reset(self, stage: str, key: str) -> None:
        """Forget an output (for --force): remove its done marker first, then its files."""
        target = self.dir(stage, key)
        (target / "done.json").unlink(missing_ok=True)
        shutil.rmtree(target, ignore_errors=True)

    # -- journal -------------------------------------------------------------------------
    def event(self, kind: str, **fields: Any) -> None:
        fields = {"event": kind, "time": time.time(), "pid": os.getpid(), "host": socket.gethostname(), **fields}
        line = redact(json.dumps(fields, sort_keys=True, default=str))
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

    # -- what is in the store ------------------------------------------------------------
    def listing(self) -> list[dict[str, Any]]:
        """Every stage output: stage, key, status (done / failed / incomplete) and its recorded settings."""
        failed = {(f["stage"], f["key"]): f for f in self.failures()}
        rows = []
        for stage_dir in sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []:
            if stage_dir.name in _NOT_STAGES:
                continue
            for key_dir in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
                stage, key = stage_dir.name, key_dir.name
                meta = self.done_meta(stage, key) if self.is_done(stage, key) else {}
                status = "done" if meta else "failed" if (stage, key) in failed else "incomplete"
                if meta and self.is_evicted(stage, key):
                    status = "evicted"
                rows.append({"stage": stage, "key": key, "status": status, "job": meta.get("job", ""),
                             "settings": meta.get("settings")})
        return rows


_NOT_STAGES = {"logs", "failures", "locks", "servers", "task_cache"}


def _describe(settings: Any, width: int = 110) -> str:
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str) if settings is not None else "-"
    return text if len(text) <= width else text[: width - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.store ls WORK_DIR [--stage S] [--json]`: the store, read without the sweep file."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m harness.store", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("ls", help="list stages, keys, status and the settings hashed into each key")
    ls.add_argument("work_dir")
    ls.add_argument("--stage", action="append", help="only this stage (repeatable)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line, settings in full")
    args = parser.parse_args(argv)
    root = Path(args.work_dir)
    if not root.is_dir():
        print(f"error: {root} is not a directory", flush=True)
        return 2
    rows = [r for r in Store(root).listing() if not args.stage or r["stage"] in args.stage]
    for row in rows:
        if args.json:
            print(json.dumps(row, sort_keys=True, default=str))
        else:
            print(f"{row['stage']:<12} {row['key']:<20} {row['status']:<10} {row['job'] or '-':<40} "
                  f"{_describe(row['settings'])}")
    if not args.json:
        counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "evicted", "failed", "incomplete")}
        print(f"{len(rows)} output(s): " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
