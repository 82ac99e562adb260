"""Which vLLM servers a sweep started, so that none outlives the process that started it.

One record per server under `<work>/servers/`, written the moment the server process is
spawned (before its 20-60 s start-up, the likeliest moment for a kill), removed when it is
stopped. A record names the server (pid = process group, as the server leads its own
session) and its owner (the sweep driver or Ray worker that started it). Every run, and
every evaluation job before it starts a server, stops the servers whose owner is gone;
servers of a live owner (a second driver, another Ray worker) are left alone. Servers are
also started with a parent-death signal (harness.serving.vllm), which stops the server process
itself at once; the records catch its engine processes and anything the signal misses.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from harness.util.atomic import atomic_write


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _same_process(pid: int, create_time: float) -> bool:
    found = _create_time(pid)
    return found is not None and abs(found - create_time) < 1e-3


class ServerRecords:
    def __init__(self, root: Path):
        self.dir = Path(root) / "servers"
        self.legacy = Path(root) / "servers.json"  # one file for all servers (before per-server records)

    def record(self, name: str, pid: int, model: str = "") -> Path:
        owner = os.getpid()
        entry = {"pid": pid, "create_time": _create_time(pid), "owner_pid": owner, "owner_create_time":
                 _create_time(owner), "host": socket.gethostname(), "model": model, "started": time.time()}
        text = json.dumps(entry, sort_keys=True)
        return atomic_write(self.dir / f"{name}.json", lambda p: Path(p).write_text(text))

    def remove(self, name: str) -> None:
        (self.dir / f"{name}.json").unlink(missing_ok=True)

    def entries(self) -> list[tuple[Path, dict[str, Any]]]:
        found = []
        for path in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            with contextlib.suppress(OSError, json.JSONDecodeError):
                found.append((path, json.loads(path.read_text())))
        return found

    def reap_orphans(self) -> int:
        """Stop the servers (on this host) whose owner process is gone; returns how many processes were killed."""
        killed = self._reap_legacy()
        host = socket.gethostname()
        for path, entry in self.entries():
            if entry.get("host") != host:
                continue  # another node's server: its own runs and workers look after it
            if entry.get("owner_create_time") and _same_process(entry["owner_pid"], entry["owner_create_time"]):
                continue  # its driver or worker still runs
            killed += _kill_server(entry["pid"], entry.get("create_time"), entry.get("started"))
            path.unlink(missing_ok=True)
        return killed

    def _reap_legacy(self) -> int:
        if not self.legacy.is_file():
            return 0
        killed = 0
        with contextlib.suppress(OSError, json.JSONDecodeError):
            for entry in json.loads(self.legacy.read_text() or "[]"):
                killed += _kill_server(entry["pid"], entry.get("create_time"))
        self.legacy.unlink(missing_ok=True)
        return killed


def _kill_server(pid: int, create_time: float | None, started: float | None = None) -> int:
    """SIGKILL the server's process group and its descendants; pids are checked against their start times,
    so a recycled pid is never hit."""
    import psutil

    victims = []
    if create_time is not None and _same_process(pid, create_time):
        with contextlib.suppress(psutil.Error):
            leader = psutil.Process(pid)
            victims = [*leader.children(recursive=True), leader]
    elif started is not None:  # the leader is gone (parent-death signal): its group may hold engine processes
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(proc.pid) == pid and proc.create_time() >= started - 1:
                    victims.append(proc)
    else:
        return 0
    if victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return len(victims)
