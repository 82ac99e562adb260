"""Run untrusted Python (model-written code) in a throw-away, limited child process.

Every call of `run_python` starts a fresh `python -I -B` in a new temporary directory
(deleted afterwards), in a new session / process group (the whole group is killed on a
timeout and after the run), with a minimal environment. A prelude runs before the code
and installs, in this order, whatever the machine allows:

1. **No network.** A new network namespace (`unshare(CLONE_NEWNET)`; as a non-root user
   together with a user namespace): the child sees only a loopback device that is down,
   so nothing can be reached, not even 127.0.0.1.
2. **Resource limits.** Address space (`memory_mb`), CPU time (just above `timeout_s`),
   size of any written file (`file_size_mb`, stdout/stderr included), no core files,
   and a process/thread budget (`RLIMIT_NPROC`: by default no new process or thread).
3. **Not root.** When the harness runs as root, the child switches to a random unused
   uid/gid that owns only its temporary directory, keeping one capability,
   CAP_DAC_READ_SEARCH (read-only access to files, so the interpreter and libraries
   installed under e.g. /root stay importable). The kernel then refuses writes,
   deletions and renames outside the temporary directory (world-writable places like
   /tmp excepted), and RLIMIT_NPROC counts only this child's tasks: no fork at all
   (`max_threads` extra tasks when asked for). After the run, every process of that
   uid is killed.
4. **An audit hook** (`sys.addaudithook`) that refuses, by ending the run with
   `failure = "forbidden: <what>"`: sockets and network modules; subprocess
   (`_posixsubprocess.fork_exec` too), os.system, exec*, fork, spawn, posix_spawn, kill
   of other processes; opening for writing, creating, removing, renaming, linking,
   chmod/chown/utime/truncate of any path outside the temporary directory (/dev/null
   excepted); loading the libc symbols that do these things through ctypes; and
   replacing the code or defaults of the hook itself.

What this does NOT protect against (be honest about it before relying on it):
- The audit hook is Python-level. Code that reaches C directly (ctypes with function
  pointers found without dlsym, a compiled extension, a memory-corruption bug in
  CPython) can bypass it. Only layers 1-3 are enforced by the kernel; check
  `isolation()` for which of them this machine grants (e.g. containers that forbid
  `unshare` get no network namespace; a non-root user gets no uid switch).
- Without the uid switch (non-root harness) the kernel still lets the code write the
  user's own files through such a bypass, and RLIMIT_NPROC is the user's whole task
  budget (set to the count at start + `max_threads`), so a bypassing fork bomb can
  briefly starve the user's other programs of new threads.
- Reads are not restricted: the code can read any file the harness can (it cannot
  send it anywhere when the network namespace is in place).
- World-writable directories (/tmp, /dev/shm) are writable by the sandbox uid if the
  audit hook is bypassed.
- CPU and memory bandwidth are shared: a sandbox can slow the machine down, not more.
- Results the code reports about itself (stdout) can be forged by the code; callers
  that score code must treat adversarial forgery as out of scope.
"""

from __future__ import annotations

import functools
import json
import os
import pwd
import random
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

FORBIDDEN_EXIT = 113  # exit status of a run the audit hook stopped
_MARKER = "\x1esandbox-forbidden: "  # stderr line prefix written by the hook
MAIN_NAME = "main.py"

# The prelude runs as `python -I -B -c PRELUDE <config-json>` before the untrusted code.
# It must not import anything the code could have shadowed (-I keeps the cwd off sys.path).
PRELUDE = r'''
import sys


def _sandbox_setup(cfg):
    import ctypes
    import os
    import resource

    done = []
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if cfg["netns"]:
        flags = 0x40000000 | (0 if uid == 0 else 0x10000000)  # CLONE_NEWNET (| CLONE_NEWUSER)
        if libc.unshare(flags) == 0:
            done.append("netns")
            if uid != 0:  # keep our own identity inside the new user namespace
                for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                                   ("gid_map", f"{gid} {gid} 1")):
                    with open(f"/proc/self/{name}", "w") as fh:
                        fh.write(text)
    lim = cfg["limits"]
    for name, value in (("RLIMIT_AS", lim["as"]), ("RLIMIT_FSIZE", lim["fsize"]), ("RLIMIT_CORE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu"], lim["cpu"] + 1))
    done.append("rlimits")
    if cfg["uid"] is not None:
        try:
            libc.prctl(8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS
            os.setgroups([])
            os.setgid(cfg["gid"])
            os.setuid(cfg["uid"])

            class Header(ctypes.Structure):
                _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

            class Data(ctypes.Structure):
                _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                            ("inheritable", ctypes.c_uint32)]

            header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
            data[0].effective = data[0].permitted = 1 << 2  # CAP_DAC_READ_SEARCH only
            if libc.capset(ctypes.byref(header), data) != 0:
                raise OSError(ctypes.get_errno(), "capset failed")
            done.append("uid")
        except OSError as exc:
            sys.stderr.write(f"sandbox: could not drop root: {exc}\n")
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    resource.setrlimit(resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))
    return done


def _sandbox_guard(root, exit_code, marker):
    import os
    import posixpath

    process_events = frozenset({"os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn",
                                "os.system", "subprocess.Popen", "os.startfile", "pty.spawn"})
    network_prefixes = ("socket.", "urllib.", "http.client.", "ftplib.", "smtplib.", "poplib.",
                        "imaplib.", "nntplib.", "telnetlib.", "webbrowser.", "ssl.")
    # event -> (index of the path argument, index of its dir_fd argument or None, follow symlinks)
    path_events = {
        "os.remove": ((0, 1, False),), "os.rmdir": ((0, 1, False),), "os.mkdir": ((0, 2, False),),
        "os.chmod": ((0, 2, True),), "os.lchmod": ((0, None, False),), "os.chown": ((0, 3, True),),
        "os.lchown": ((0, None, False),), "os.chflags": ((0, None, True),),
        "os.lchflags": ((0, None, False),), "os.utime": ((0, 3, True),), "os.truncate": ((0, None, True),),
        "os.setxattr": ((0, None, True),), "os.removexattr": ((0, None, True),),
        "os.symlink": ((1, 2, False),), "os.link": ((1, 3, False),),
        "os.rename": ((0, 2, False), (1, 3, False)), "shutil.rmtree": ((0, 1, False),),
        "shutil.copyfile": ((1, None, True),), "shutil.copymode": ((1, None, True),),
        "shutil.copystat": ((1, None, True),), "shutil.copytree": ((1, None, True),),
        "shutil.move": ((0, None, False), (1, None, True)), "shutil.chown": ((0, None, True),),
    }
    bad_symbols = frozenset({
        "fork", "vfork", "clone", "clone3", "execve", "execv", "execvp", "execvpe", "execl", "execlp",
        "execle", "fexecve", "system", "popen", "posix_spawn", "posix_spawnp", "syscall", "socket",
        "socketpair", "connect", "bind", "sendto", "unlink", "unlinkat", "rmdir", "rename", "renameat",
        "renameat2", "link", "linkat", "symlink", "symlinkat", "truncate", "chmod", "fchmodat", "chown",
        "fchownat", "kill", "killpg", "tgkill", "ptrace", "setns", "unshare", "mount", "umount2",
        "open", "open64", "openat", "openat64", "creat", "creat64", "fopen", "fopen64", "freopen",
        "mkdir", "mkdirat", "remove", "setrlimit", "prlimit", "prlimit64",
    })
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def hook(event, args, *, _root=root, _code=exit_code, _marker=marker, _write=os.write, _exit=os._exit,
             _getpid=os.getpid, _getcwd=os.getcwd, _readlink=os.readlink, _realpath=posixpath.realpath,
             _join=posixpath.join, _split=posixpath.split, _fsdecode=os.fsdecode, _str=str, _int=int,
             _isinstance=isinstance, _process=process_events, _net=network_prefixes, _paths=path_events,
             _symbols=bad_symbols, _wflags=write_flags):
        def deny(what):
            try:
                _write(2, (_marker + what + "\n").encode("utf-8", "replace"))
            finally:
                _exit(_code)

        def inside(path, dir_fd, follow):
            if _isinstance(path, _int):  # an open descriptor: judge the file it points to
                try:
                    path = _readlink(f"/proc/self/fd/{path}")
                except OSError:
                    return True  # pipes and sockets have no path; sockets are refused at creation
                if not path.startswith("/"):
                    return True
            path = _fsdecode(path)
            if not path.startswith("/"):
                base = _readlink(f"/proc/self/fd/{dir_fd}") if dir_fd not in (None, -1) else _getcwd()
                path = _join(base, path)
            if follow:
                full = _realpath(path)
            else:  # the operation acts on the link itself, not on what it points to
                head, tail = _split(path.rstrip("/") or "/")
                full = _join(_realpath(head), tail)
            return full == _root or full.startswith(_root + "/") or full == "/dev/null"

        if event == "open":
            path, mode, flags = args
            writing = (_isinstance(mode, _str) and ("w" in mode or "a" in mode or "x" in mode or "+" in mode)) \
                or (_isinstance(flags, _int) and flags & _wflags)
            if writing and not _isinstance(path, _int):
                if mode is None and not _fsdecode(path).startswith("/"):
                    # os.open's dir_fd is not part of the event: a relative path cannot be placed
                    deny(f"os.open for writing with a relative path: {_fsdecode(path)}")
                if not inside(path, None, True):
                    deny(f"write outside the sandbox: {_fsdecode(path)}")
        elif event in _paths:
            for index, fd_index, follow in _paths[event]:
                dir_fd = args[fd_index] if fd_index is not None and fd_index < len(args) else None
                if not inside(args[index], dir_fd, follow):
                    target = args[index] if _isinstance(args[index], _int) else _fsdecode(args[index])
                    deny(f"{event} outside the sandbox: {target}")
        elif event in _process:
            deny(f"process creation ({event})")
        elif event.startswith(_net):
            deny(f"network ({event})")
        elif event in ("os.kill", "os.killpg"):
            if args[0] not in (0, _getpid()):
                deny(f"{event} of another process")
        elif event == "ctypes.dlsym":
            name = args[1] if len(args) > 1 else None
            if _isinstance(name, _str) and name in _symbols:
                deny(f"ctypes access to {name}")
        elif event == "object.__setattr__":
            if len(args) > 1 and args[0] is hook and args[1] in ("__code__", "__defaults__", "__kwdefaults__"):
                deny(f"replacing the sandbox guard's {args[1]}")

    sys.addaudithook(hook)

    import _posixsubprocess  # its fork_exec raises no audit event of its own

    def refuse_fork_exec(*_args, **_kwargs):
        hook("subprocess.Popen", ())

    _posixsubprocess.fork_exec = refuse_fork_exec


def _sandbox_main():
    import json

    cfg = json.loads(sys.argv[1])
    done = _sandbox_setup(cfg)
    sys.dont_write_bytecode = True
    if cfg.get("probe"):
        import os
        print(json.dumps({"done": done, "uid": os.getuid(), "netns": os.readlink("/proc/self/ns/net")}))
        return None
    if cfg["audit_hook"]:
        _sandbox_guard(cfg["root"], cfg["exit_code"], cfg["marker"])
    path = cfg["main"]
    with open(path, encoding="utf-8") as fh:
        source = fh.read()
    return compile(source, path, "exec"), path


_sandbox_code = _sandbox_main()
if _sandbox_code is not None:
    sys.argv = [_sandbox_code[1]]
    __file__, _sandbox_code = _sandbox_code[1], _sandbox_code[0]
    del _sandbox_setup, _sandbox_guard, _sandbox_main
    exec(_sandbox_code, globals())
'''


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
                return "forbidden: " + line[len(_MARKER):]
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


def _minimal_env(root: str, extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": root, "TMPDIR": root, "LANG": "C.UTF-8",
           "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    env.update(extra or {})
    return env


def run_python(source: str, *, stdin: str = "", timeout_s: float = 10.0, memory_mb: int = 1024,
               files: Mapping[str, str | bytes | os.PathLike] | None = None,
               collect: Mapping[str, os.PathLike | str] | None = None, env: Mapping[str, str] | None = None,
               file_size_mb: int = 64, max_threads: int = 0, python: str | None = None,
               tmp_root: str | None = None, audit_hook: bool = True) -> SandboxResult:
    """Run `source` as the main script of a fresh sandboxed interpreter and report what happened.

    `files` are written into the temporary directory first (str = text, bytes = binary,
    a path = a copy of that file); `collect` maps names the code writes there to where
    they are moved after the run (regular files only). `env` adds variables to the
    minimal environment. stdout/stderr are decoded as UTF-8 (errors replaced).
    `max_threads` > 0 lets the code start that many threads (and, were it to bypass the
    audit hook, that many processes). `audit_hook=False` is for tests of the kernel layers.
    """
    if timeout_s <= 0 or memory_mb <= 0 or file_size_mb <= 0:
        raise SandboxError("timeout_s, memory_mb and file_size_mb must be positive")
    uid = _free_uid()
    root = os.path.realpath(tempfile.mkdtemp(prefix="harness-sandbox-", dir=tmp_root))
    scratch = tempfile.mkdtemp(prefix="harness-sandbox-io-", dir=tmp_root)  # parent-only: stdio files
    proc = None
    try:
        _write_inputs(root, {**(files or {}), MAIN_NAME: source}, uid)
        if uid is not None:
            os.chown(root, uid, uid)
        nproc = 1 + max_threads if uid is not None else _user_tasks(os.getuid()) + max_threads
        config = {
            "root": root, "main": os.path.join(root, MAIN_NAME), "uid": uid, "gid": uid, "netns": True,
            "audit_hook": audit_hook,
            "exit_code": FORBIDDEN_EXIT, "marker": _MARKER,
            "limits": {"as": memory_mb << 20, "fsize": file_size_mb << 20,
                       "cpu": int(timeout_s) + 1, "nproc": nproc},
        }
        paths = {name: os.path.join(scratch, name) for name in ("stdin", "stdout", "stderr")}
        with open(paths["stdin"], "w", encoding="utf-8") as fh:
            fh.write(stdin)
        with open(paths["stdin"], "rb") as fin, open(paths["stdout"], "wb") as fout, \
                open(paths["stderr"], "wb") as ferr:
            started = time.monotonic()
            proc = subprocess.Popen([python or sys.executable, "-I", "-B", "-c", PRELUDE, json.dumps(config)],
                                    stdin=fin, stdout=fout, stderr=ferr, cwd=root, env=_minimal_env(root, env),
                                    start_new_session=True, close_fds=True)
            timed_out = False
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc.pid)
                proc.wait()
            duration = time.monotonic() - started
        _kill_group(proc.pid)
        if uid is not None:
            _kill_uid(uid)
        stdout = Path(paths["stdout"]).read_bytes().decode("utf-8", "replace")
        stderr = Path(paths["stderr"]).read_bytes().decode("utf-8", "replace")
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


@functools.lru_cache(maxsize=1)
def isolation() -> dict[str, Any]:
    """Which kernel-enforced layers this machine grants to a sandbox (probed once).

    Returns {"network_namespace": bool, "rlimits": bool, "unprivileged_uid": bool,
    "audit_hook": True, "parent_is_root": bool}: record it with results that ran code.
    """
    uid = _free_uid()
    root = os.path.realpath(tempfile.mkdtemp(prefix="harness-sandbox-probe-"))
    try:
        if uid is not None:
            os.chown(root, uid, uid)
        config = {"root": root, "main": "", "uid": uid, "gid": uid, "netns": True, "probe": True,
                  "exit_code": FORBIDDEN_EXIT, "marker": _MARKER,
                  "limits": {"as": 1 << 30, "fsize": 1 << 20, "cpu": 10,
                             "nproc": 2 if uid is not None else _user_tasks(os.getuid()) + 8}}
        done = subprocess.run([sys.executable, "-I", "-B", "-c", PRELUDE, json.dumps(config)], cwd=root,
                              env=_minimal_env(root, None), capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise SandboxError(f"the sandbox prelude failed on this machine:\n{done.stderr[-2000:]}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        ours = os.readlink("/proc/self/ns/net")
        return {"network_namespace": "netns" in report["done"] and report["netns"] != ours,
                "rlimits": "rlimits" in report["done"],
                "unprivileged_uid": "uid" in report["done"] and report["uid"] != 0,
                "audit_hook": True, "parent_is_root": os.geteuid() == 0}
    finally:
        if uid is not None:
            _kill_uid(uid)
        _remove_tree(root)


__all__ = ["SandboxResult", "SandboxError", "run_python", "run_many", "isolation", "PRELUDE", "FORBIDDEN_EXIT"]


def _debug_main(argv: Sequence[str]) -> int:  # pragma: no cover - manual use: python -m harness.sandbox FILE
    source = Path(argv[0]).read_text() if argv else sys.stdin.read()
    result = run_python(source)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    print(json.dumps({"failure": result.failure, "returncode": result.returncode,
                      "duration_s": round(result.duration_s, 3), "isolation": isolation()}), file=sys.stderr)
    return 0 if result.ok else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_debug_main(sys.argv[1:]))
