"""Run untrusted Python (model-written code) in a throw-away, limited child process.

Every call of `run_python` starts a fresh `python -I -B` in a new temporary directory
(deleted afterwards), in a new session / process group (the whole group is killed on a
timeout and after the run), with a minimal environment (no variable named like a secret,
`*_TOKEN`, `*_KEY`, ..., may be added). A prelude runs before the code and installs, in
this order, whatever the machine allows:

1. **No network.** A new network namespace (`unshare(CLONE_NEWNET)`; as a non-root user
   together with a user namespace): the child sees only a loopback device that is down,
   so nothing can be reached, not even 127.0.0.1.
2. **A minimal, read-only view of the filesystem** (layer "mount_namespace"). In a new
   mount namespace (created with the network one) a small tmpfs becomes the root, holding
   only read-only bind mounts of the interpreter's installation (`sys.prefix`,
   `sys.base_prefix`: the stdlib and the venv's site-packages, so numpy and evalplus
   import), the system libraries (`SYSTEM_PATHS`: /usr/lib, /lib, /lib64, ld.so.cache),
   `readable` paths the caller adds, /dev/null, zero, random, urandom, /proc/self and
   /proc/meminfo (`PROC_ENTRIES`; psutil, which evalplus uses, reads it), plus the
   temporary directory, read-write, at its own path. `pivot_root` moves into it and the
   old root is detached: /etc/shadow, home directories, other samples' directories, the
   work and results directories and other processes' /proc entries do not exist there.
3. **Resource limits.** Address space (`memory_mb`), CPU time (just above `timeout_s`),
   size of any written file (`file_size_mb`, stdout/stderr included), no core files,
   and a process/thread budget (`RLIMIT_NPROC`: by default no new process or thread).
4. **Landlock** (layer "landlock", Linux 5.13+): the same view enforced by the kernel's
   access-control ruleset, with no namespace needed: files may be opened for reading only
   beneath those paths and written only in the temporary directory; TCP bind/connect are
   refused (ABI 4+), and so are signals and abstract unix sockets reaching outside the
   sandbox (ABI 6+). Where the mount namespace works too, both apply.
5. **Not root.** When the harness runs as root, the child switches to a random unused
   uid/gid that owns only its temporary directory. Inside a minimal root it keeps no
   capability at all. Without one it keeps CAP_DAC_READ_SEARCH (so an interpreter
   installed under e.g. /root, mode 0700, stays importable): with Landlock that is
   confined too (even `open_by_handle_at`); with neither layer it reads every file. A
   non-root harness's child drops every capability its user namespace gave it. The
   kernel then refuses writes, deletions and renames outside the temporary directory,
   and RLIMIT_NPROC counts only this child's tasks: no fork at all (`max_threads` extra
   tasks when asked for). After the run, every process of that uid is killed.
6. **An audit hook** (`sys.addaudithook`) that refuses, by ending the run with
   `failure = "forbidden: <what>"`: sockets and network modules; subprocess
   (`_posixsubprocess.fork_exec` too), os.system, exec*, fork, spawn, posix_spawn, kill
   of other processes; opening for writing, creating, removing, renaming, linking,
   chmod/chown/utime/truncate of any path outside the temporary directory (/dev/null
   excepted); loading the libc symbols that do these things through ctypes; and
   replacing the code or defaults of the hook itself.

`isolation()` probes once per process which layers the machine grants (the probe checks
that it really cannot read a file outside its view) and every later run requires those
read-isolation layers: one that cannot be set up is a `SandboxError`, never a silently
open run. Where neither a mount namespace nor Landlock is available, that is logged once.

Outputs: `SandboxResult.stdout`/`stderr` hold everything the code printed (up to
`file_size_mb`); what goes into results is cut to `KEPT_OUTPUT_CHARS` (1000 characters,
head and tail) by `clip_output`, and a failure reason to `KEPT_FAILURE_CHARS` (300).

What this does NOT protect against (be honest about it before relying on it):
- The audit hook is Python-level. Code that reaches C directly (ctypes with function
  pointers found without dlsym, a compiled extension, a memory-corruption bug in
  CPython) can bypass it. Only layers 1-5 are enforced by the kernel; check
  `isolation()` for which of them this machine grants (e.g. containers that forbid
  `unshare` get no namespaces; a non-root user gets no uid switch).
- Without the uid switch (non-root harness) and without either read-isolation layer, the
  kernel still lets the code write the user's own files through such a bypass, and
  RLIMIT_NPROC is the user's whole task budget (set to the count at start +
  `max_threads`), so a bypassing fork bomb can briefly starve the user's other programs
  of new threads.
- Without either read-isolation layer, reads are not restricted: the code can read any
  file the harness can, and world-writable directories (/tmp, /dev/shm) are writable by
  the sandbox uid if the audit hook is bypassed. Under Landlock alone the code can still
  `stat` any path whose name it guesses (existence, size, times: Landlock governs
  opening, not looking up).
- The view includes the whole interpreter installation (every package in the venv,
  readable, not writable) and the system library directories.
- CPU and memory bandwidth are shared: a sandbox can slow the machine down, not more.
- Results the code reports about itself (stdout) can be forged by the code; callers
  that score code must treat adversarial forgery as out of scope.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import marshal
import os
import pwd
import random
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("harness.sandbox.api")

FORBIDDEN_EXIT = 113  # exit status of a run the audit hook stopped
SETUP_EXIT = 114  # exit status of a child that could not put a requested layer in place
_MARKER = "\x1esandbox-forbidden: "  # stderr line prefix written by the hook
_SETUP_MARKER = "\x1esandbox-setup: "  # stderr line prefix written when a layer could not be set up
MAIN_NAME = "main.py"
# What callers keep of a run's stdout/stderr in results (`clip_output`), and of a failure reason.
KEPT_OUTPUT_CHARS = 1000
KEPT_FAILURE_CHARS = 300
# The filesystem view of a minimal root (besides the interpreter's prefixes and the temporary dir):
SYSTEM_PATHS = ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/etc/ld.so.cache")  # shared libraries, locales
DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
PROC_ENTRIES = ("/proc/meminfo",)  # evalplus asks psutil for the machine's memory; plus /proc/self
READ_ISOLATION_LAYERS = ("mount_namespace", "landlock")

# The prelude runs as `python -I -B -c PRELUDE <config-json>` before the untrusted code.
# It must not import anything the code could have shadowed (-I keeps the cwd off sys.path).
PRELUDE = (Path(__file__).parent / "child.py").read_text(encoding="utf-8")  # the child program


@dataclass
class SandboxResult:
    """What a sandboxed run did. `failure` is "" on success, else why it failed."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    duration_s: float
    failure: str  # "", "timeout", "memory", "output limit", "forbidden: ...", "killed by signal N", "exit N"

    @property
    def ok(self) -> bool:
        return self.failure == ""


class SandboxError(RuntimeError):
    """The sandbox itself could not run (bad arguments, no temporary space), not the code."""


_MIN_SANDBOX_UID = 100_000


def _free_uid() -> int | None:
    """A random uid/gid no account uses, for a child of a root harness (None when not root)."""
    if os.geteuid() != 0:
        return None
    rng = random.SystemRandom()
    for _ in range(100):
        uid = rng.randrange(_MIN_SANDBOX_UID, 2**31 - 2)
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise SandboxError("could not find an unused uid for the sandbox")


def _user_tasks(uid: int) -> int:
    """Threads now running under `uid` (the base of a non-root child's RLIMIT_NPROC)."""
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            count += int(fields.get("Threads", "1"))
    return count


def _kill_uid(uid: int) -> None:
    """Kill every process of a sandbox uid (escaped children included)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry.name}").st_uid == uid:
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def _wait(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Whether the child exits within `timeout_s`, noticed the moment it does.

    `Popen.wait(timeout)` polls with doubling sleeps (a 30 ms run is seen at 31.5 ms, a
    32 ms one at 63.5 ms); a pidfd becomes readable when the process ends.
    """
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # Python or kernel without pidfd_open (Linux < 5.3)
        try:
            proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout_s)
        return bool(readable)
    finally:
        os.close(pidfd)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _remove_tree(path: str) -> None:
    """Delete a sandbox directory even if the code made parts of it unreadable."""

    def fix_and_retry(func, failed_path, _exc):
        for target in (os.path.dirname(failed_path), failed_path):
            try:
                os.chmod(target, 0o700, follow_symlinks=False)
            except OSError:
                pass
        try:
            func(failed_path)
        except FileNotFoundError:
            pass

    shutil.rmtree(path, onerror=fix_and_retry)


def _write_inputs(root: str, files: Mapping[str, str | bytes | os.PathLike], uid: int | None) -> None:
    for name, content in files.items():
        target = os.path.normpath(os.path.join(root, name))
        if not target.startswith(root + os.sep):
            raise SandboxError(f"sandbox file name {name!r} leaves the sandbox directory")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if isinstance(content, os.PathLike):
            shutil.copyfile(content, target)
        else:
            with open(target, "wb") as fh:
                fh.write(content.encode() if isinstance(content, str) else content)
    if uid is not None:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [*dirnames, *filenames]:
                os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)


def _collect_outputs(root: str, collect: Mapping[str, os.PathLike | str]) -> None:
    """Move regular files the code wrote (no links) to their destinations."""
    for name, dest in collect.items():
        source = os.path.normpath(os.path.join(root, name))
        if not source.startswith(root + os.sep):
            raise SandboxError(f"collected name {name!r} leaves the sandbox directory")
        try:
            info = os.lstat(source)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            continue  # a symlink or hard link could point at a file the code may not hand out
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        shutil.move(source, staged)
        if os.geteuid() == 0:
            os.chown(staged, 0, 0)
        os.chmod(staged, 0o644)
        os.replace(staged, dest)


def _failure(returncode: int | None, timed_out: bool, cpu_limited: bool, stderr: str) -> str:
    if timed_out or cpu_limited:
        return "timeout"
    if returncode == FORBIDDEN_EXIT:
        for line in stderr.split("\n"):
            if line.startswith(_MARKER):
                return clip_output("forbidden: " + line[len(_MARKER):], KEPT_FAILURE_CHARS)
        return "forbidden"
    if returncode == 0:
        return ""
    if returncode == -signal.SIGXFSZ:
        return "output limit"
    tail = stderr.strip().splitlines()[-1:] or [""]
    if tail[0].startswith("MemoryError"):
        return "memory"
    if returncode is not None and returncode < 0:
        return f"killed by signal {-returncode}"
    return f"exit {returncode}"


def _setup_error(returncode: int | None, stderr: str) -> str | None:
    """Why the child could not put a requested layer in place (None: it did)."""
    if returncode != SETUP_EXIT:
        return None
    for line in stderr.split("\n"):
        if line.startswith(_SETUP_MARKER):
            return line[len(_SETUP_MARKER):]
    return None


def clip_output(text: str, limit: int = KEPT_OUTPUT_CHARS) -> str:
    """At most about `limit` characters of a run's output, for storing: its head and tail, the cut marked.

    What a sandboxed program prints is unbounded (up to `file_size_mb`); whatever of it goes
    into results (failure details, per-sample records) goes through this first.
    """
    if len(text) <= limit:
        return text
    half = max(limit // 2, 1)
    return f"{text[:half]} [... {len(text) - 2 * half} characters cut ...] {text[-half:]}"


def _check_env(extra: Mapping[str, str] | None) -> None:
    """Secrets never enter the sandbox: refuse variables named like one (*_TOKEN, *_KEY, ...) or holding one."""
    from harness.util.redaction import is_secret_name, secret_values

    named = sorted(name for name in extra or {} if is_secret_name(name))
    known = secret_values()
    if named or any(value in known for value in (extra or {}).values()):
        raise SandboxError(f"refusing to pass secrets into the sandbox's environment ({named or 'a known value'})")


def _minimal_env(root: str, extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": root, "TMPDIR": root, "LANG": "C.UTF-8",
           "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    env.update(extra or {})
    return env


# Compiling the prelude costs a child about 2 ms; with the parent's own interpreter it gets it
# compiled (marshal) in its parent-only scratch dir instead.
_BOOT = ("import marshal, sys\nwith open(sys.argv.pop(1), 'rb') as _sandbox_fh:\n"
         "    _sandbox_boot = marshal.loads(_sandbox_fh.read())\ndel marshal, _sandbox_fh\nexec(_sandbox_boot)\n")


@functools.lru_cache(maxsize=1)
def _compiled_prelude() -> bytes:
    return marshal.dumps(compile(PRELUDE, "<string>", "exec"))


def _child_command(python: str | None, scratch: str, config: dict[str, Any]) -> list[str]:
    if python is None or os.path.realpath(python) == os.path.realpath(sys.executable):
        code = os.path.join(scratch, "prelude.marshal")
        with open(code, "wb") as fh:
            fh.write(_compiled_prelude())
        return [sys.executable, "-I", "-B", "-c", _BOOT, code, json.dumps(config)]
    return [python, "-I", "-B", "-c", PRELUDE, json.dumps(config)]


def _child_config(root: str, scratch: str, uid: int | None, read_isolation: Sequence[str], *,
                  readable: Sequence[str] = (), **extra: Any) -> dict[str, Any]:
    """The prelude's settings (`extra`: limits, audit hook, ...)."""
    new_root = os.path.join(scratch, "view")
    os.mkdir(new_root)
    return {"root": root, "uid": uid, "gid": uid, "netns": True, "read_isolation": list(read_isolation),
            "new_root": new_root, "readable": [*SYSTEM_PATHS, *map(os.fspath, readable)], "devices": list(DEVICES),
            "proc": list(PROC_ENTRIES), "exit_code": FORBIDDEN_EXIT, "marker": _MARKER, "setup_exit": SETUP_EXIT,
            "setup_marker": _SETUP_MARKER, **extra}


def run_python(source: str, *, stdin: str = "", timeout_s: float = 10.0, memory_mb: int = 1024,
               files: Mapping[str, str | bytes | os.PathLike] | None = None,
               collect: Mapping[str, os.PathLike | str] | None = None, env: Mapping[str, str] | None = None,
               file_size_mb: int = 64, max_threads: int = 0, python: str | None = None,
               tmp_root: str | None = None, audit_hook: bool = True, readable: Sequence[str | os.PathLike] = (),
               read_isolation: Sequence[str] | None = None) -> SandboxResult:
    """Run `source` as the main script of a fresh sandboxed interpreter and report what happened.

    `files` are written into the temporary directory first (str = text, bytes = binary,
    a path = a copy of that file); `collect` maps names the code writes there to where
    they are moved after the run (regular files only). `env` adds variables to the
    minimal environment (names that look like secrets are refused). stdout/stderr are
    decoded as UTF-8 (errors replaced); keep at most `clip_output` of them in results.
    `max_threads` > 0 lets the code start that many threads (and, were it to bypass the
    audit hook, that many processes). `readable` adds paths the code may read (beyond the
    interpreter's installation and the system libraries). `read_isolation` picks the
    layers that confine reads (default: every one `isolation()` found; a requested layer
    that cannot be set up is a SandboxError). `audit_hook=False` and `read_isolation` are
    for tests of the kernel layers.
    """
    if timeout_s <= 0 or memory_mb <= 0 or file_size_mb <= 0:
        raise SandboxError("timeout_s, memory_mb and file_size_mb must be positive")
    layers = isolation()["read_isolation"] if read_isolation is None else list(read_isolation)
    unknown = sorted(set(layers) - set(READ_ISOLATION_LAYERS))
    if unknown:
        raise SandboxError(f"unknown read isolation layers {unknown}; known: {list(READ_ISOLATION_LAYERS)}")
    _check_env(env)
    uid = _free_uid()
    root = os.path.realpath(tempfile.mkdtemp(prefix="harness-sandbox-", dir=tmp_root))
    scratch = tempfile.mkdtemp(prefix="harness-sandbox-io-", dir=tmp_root)  # parent-only: stdio files
    proc = None
    try:
        _write_inputs(root, {**(files or {}), MAIN_NAME: source}, uid)
        if uid is not None:
            os.chown(root, uid, uid)
        nproc = 1 + max_threads if uid is not None else _user_tasks(os.getuid()) + max_threads
        config = _child_config(root, scratch, uid, layers, readable=readable, main=os.path.join(root, MAIN_NAME),
                               audit_hook=audit_hook,
                               limits={"as": memory_mb << 20, "fsize": file_size_mb << 20,
                                       "cpu": int(timeout_s) + 1, "nproc": nproc})
        paths = {name: os.path.join(scratch, name) for name in ("stdin", "stdout", "stderr")}
        with open(paths["stdin"], "w", encoding="utf-8") as fh:
            fh.write(stdin)
        with open(paths["stdin"], "rb") as fin, open(paths["stdout"], "wb") as fout, \
                open(paths["stderr"], "wb") as ferr:
            started = time.monotonic()
            proc = subprocess.Popen(_child_command(python, scratch, config),
                                    stdin=fin, stdout=fout, stderr=ferr, cwd=root, env=_minimal_env(root, env),
                                    start_new_session=True, close_fds=True)
            timed_out = not _wait(proc, timeout_s)
            if timed_out:
                _kill_group(proc.pid)
            proc.wait()
            duration = time.monotonic() - started
        _kill_group(proc.pid)
        if uid is not None:
            _kill_uid(uid)
        stdout = Path(paths["stdout"]).read_bytes().decode("utf-8", "replace")
        stderr = Path(paths["stderr"]).read_bytes().decode("utf-8", "replace")
        setup_error = _setup_error(proc.returncode, stderr)
        if setup_error is not None:
            raise SandboxError(f"the sandbox could not isolate the run: {setup_error}")
        cpu_limited = proc.returncode == -signal.SIGXCPU
        # Python ignores SIGXFSZ: an over-long write fails with EFBIG and the program exits with an error.
        flooded = max(os.path.getsize(paths["stdout"]), os.path.getsize(paths["stderr"])) >= file_size_mb << 20
        if collect and not timed_out:
            _collect_outputs(root, collect)
        failure = _failure(proc.returncode, timed_out, cpu_limited, stderr)
        if failure and not timed_out and flooded:
            failure = "output limit"
        return SandboxResult(proc.returncode, stdout, stderr, timed_out, duration, failure)
    finally:
        if proc is not None and proc.poll() is None:
            _kill_group(proc.pid)
            proc.wait()
        if uid is not None:
            _kill_uid(uid)
        _remove_tree(root)
        _remove_tree(scratch)


def run_many(jobs: Iterable[Mapping[str, Any] | str], workers: int = 2) -> list[SandboxResult]:
    """Run many sandboxes, `workers` at a time; results in input order.

    A job is the source text or a mapping of `run_python` keyword arguments (with "source").
    """
    normalised = [{"source": job} if isinstance(job, str) else dict(job) for job in jobs]
    if workers < 1:
        raise SandboxError("workers must be at least 1")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: run_python(**job), normalised))


_CAPABILITY_NAMES = {2: "CAP_DAC_READ_SEARCH"}
_isolation_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _probe() -> dict[str, Any]:
    uid = _free_uid()
    root = os.path.realpath(tempfile.mkdtemp(prefix="harness-sandbox-probe-"))
    scratch = tempfile.mkdtemp(prefix="harness-sandbox-probe-io-")
    try:
        if uid is not None:
            os.chown(root, uid, uid)
        hidden = os.path.join(scratch, "hidden")  # outside the sandbox: the code must not be able to read it
        with open(hidden, "w") as fh:
            fh.write("not for the sandbox")
        os.chmod(hidden, 0o644)
        config = _child_config(root, scratch, uid, READ_ISOLATION_LAYERS, main="", probe=True, hidden=hidden,
                               limits={"as": 1 << 30, "fsize": 1 << 20, "cpu": 10,
                                       "nproc": 2 if uid is not None else _user_tasks(os.getuid()) + 8})
        done = subprocess.run(_child_command(None, scratch, config), cwd=root,
                              env=_minimal_env(root, None), capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise SandboxError(f"the sandbox prelude failed on this machine:\n{done.stderr[-2000:]}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        ours = os.readlink("/proc/self/ns/net")
        confined = report["hidden"] != "readable"
        layers = [layer for layer in READ_ISOLATION_LAYERS if layer in report["done"] and confined]
        found = {"network_namespace": "netns" in report["done"] and report["netns"] != ours,
                 "rlimits": "rlimits" in report["done"],
                 "unprivileged_uid": "uid" in report["done"] and report["uid"] != 0,
                 "audit_hook": True, "parent_is_root": os.geteuid() == 0,
                 "mount_namespace": "mount_namespace" in layers, "landlock": "landlock" in layers,
                 "landlock_abi": report["landlock_abi"], "read_isolation": layers,
                 "capabilities": [name for bit, name in _CAPABILITY_NAMES.items() if report["capabilities"] >> bit & 1],
                 "unavailable": report["notes"]}
        if not layers:
            log.warning("sandbox: this machine grants neither a mount namespace nor Landlock, so sandboxed code "
                        "can read every file the harness can read (%s)", "; ".join(report["notes"]) or "no reason")
        return found
    finally:
        if uid is not None:
            _kill_uid(uid)
        _remove_tree(root)
        _remove_tree(scratch)


def isolation() -> dict[str, Any]:
    """Which kernel-enforced layers this machine grants to a sandbox (probed once per process).

    Returns {"network_namespace", "rlimits", "unprivileged_uid", "audit_hook", "parent_is_root",
    "mount_namespace", "landlock": bool, "landlock_abi": int, "read_isolation": the layers that
    confine reads (checked: the probe could not read a file outside its view; [] = reads are open,
    logged once), "capabilities": those the child keeps, "unavailable": why a layer is missing}:
    record it with results that ran code.
    """
    with _isolation_lock:
        return copy.deepcopy(_probe())


__all__ = ["SandboxResult", "SandboxError", "run_python", "run_many", "isolation", "clip_output", "PRELUDE",
           "FORBIDDEN_EXIT", "KEPT_OUTPUT_CHARS"]


def _debug_main(argv: Sequence[str]) -> int:  # pragma: no cover - manual use: python -m harness.sandbox.api FILE
    source = Path(argv[0]).read_text() if argv else sys.stdin.read()
    result = run_python(source)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    print(json.dumps({"failure": result.failure, "returncode": result.returncode,
                      "duration_s": round(result.duration_s, 3), "isolation": isolation()}), file=sys.stderr)
    return 0 if result.ok else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_debug_main(sys.argv[1:]))
