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

log = logging.getLogger("harness.sandbox")

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
PRELUDE = r'''
import sys


class _SandboxSetupError(Exception):
    """A layer the parent asked for could not be put in place: the run must not go on without it."""


def _sandbox_fail(check, result, what):
    import ctypes
    import os

    if check(result):
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _sandbox_view(cfg):
    """What the code may read (real paths, deduplicated) and the symlinked names that lead there."""
    import os

    names = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *cfg["readable"]]
    names = [n for n in dict.fromkeys(os.path.abspath(n) for n in names) if os.path.exists(n)]
    reals = sorted({os.path.realpath(n) for n in names})
    kept = []
    for real in reals:  # a path inside one already kept is covered by it
        if not any(real == k or real.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(real)
    devices = [d for d in cfg["devices"] if os.path.exists(d)]
    proc = [p for p in cfg["proc"] if os.path.exists(p)]
    return names, kept, devices, proc


def _sandbox_minimal_root(libc, cfg, view):
    """Build a tmpfs root holding only the view (read-only binds) and the temporary dir, and pivot into it.

    Runs in a fresh mount namespace, with the mount capabilities still held.
    """
    import os
    import posixpath

    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
    MS_REMOUNT, MS_BIND, MS_NOATIME, MS_NODIRATIME = 32, 4096, 1024, 2048
    MS_REC, MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 16384, 1 << 18, 1 << 21, 1 << 24
    MNT_DETACH = 2
    pivot_root = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "ppc64": 203,
                  "s390x": 217}.get(os.uname().machine)
    if pivot_root is None:
        raise OSError(0, f"pivot_root: unknown syscall number on {os.uname().machine}")
    fail = _sandbox_fail
    names, reals, devices, proc = view
    new = cfg["new_root"]
    fail(bool, libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making mounts private")
    fail(bool, libc.mount(b"tmpfs", new.encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                          b"mode=0755,size=1m,nr_inodes=4096"), "mounting the new root")

    def links_to(path, depth=0):
        """Recreate, inside the new root, every symlink met on the way to `path`."""
        walked = "/"
        for part in path.strip("/").split("/"):
            step = posixpath.join(walked, part)
            if os.path.islink(step):
                mirror = new + step
                if not os.path.lexists(mirror):
                    os.makedirs(new + walked, exist_ok=True)
                    os.symlink(os.readlink(step), mirror)
                if depth < 20:
                    links_to(posixpath.normpath(posixpath.join(walked, os.readlink(step))), depth + 1)
                step = os.path.realpath(step)
            walked = step

    def kept_flags(path):
        """Mount flags a remount must keep (a user namespace may not clear them)."""
        found = os.statvfs(path).f_flag
        flags = MS_NOSUID | MS_NODEV
        for st, ms in ((os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
                       (os.ST_RELATIME, MS_RELATIME)):
            if found & st:
                flags |= ms
        if not found & (os.ST_NOATIME | os.ST_RELATIME):
            flags |= MS_STRICTATIME
        return flags

    def bind(source, target, writable=False, device=False):
        if os.path.isdir(source):
            os.makedirs(new + target, exist_ok=True)
        else:
            os.makedirs(posixpath.dirname(new + target), exist_ok=True)
            if not os.path.exists(new + target):
                os.close(os.open(new + target, os.O_CREAT | os.O_WRONLY, 0o644))
        fail(bool, libc.mount(source.encode(), (new + target).encode(), None, MS_BIND, None), f"binding {source}")
        if not device:
            flags = MS_REMOUNT | MS_BIND | kept_flags(source) | (0 if writable else MS_RDONLY)
            fail(bool, libc.mount(None, (new + target).encode(), None, flags, None), f"remounting {source}")

    for name in names:
        links_to(name)
    for real in reals:
        bind(real, real)
    for device in devices:
        bind(device, device, writable=True, device=True)
    bind(f"/proc/{os.getpid()}", "/proc/self")
    for entry in proc:
        bind(entry, entry)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.makedirs(new + "/dev", exist_ok=True)
        os.symlink(target, f"{new}/dev/{name}")
    links_to(cfg["root"])
    bind(cfg["root"], cfg["root"], writable=True)
    os.chdir(new)
    fail(bool, libc.syscall(pivot_root, b".", b"."), "pivot_root")
    fail(bool, libc.umount2(b".", MNT_DETACH), "detaching the old root")
    os.chdir("/")
    fail(bool, libc.mount(None, b"/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
         "making the new root read-only")
    os.chdir(cfg["root"])


def _sandbox_landlock_abi(libc):
    abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    return abi if abi > 0 else 0


def _sandbox_landlock(libc, abi, cfg, view):
    """Restrict this process (and anything it starts) to reading the view and writing its temporary dir.

    Also refuses TCP bind/connect (ABI 4+) and signals / abstract unix sockets outside the sandbox (ABI 6+).
    """
    import ctypes
    import os
    import stat

    EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1, 2, 4, 8
    fs = (1 << 13) - 1  # ABI 1: execute .. make_sym
    if abi >= 2:
        fs |= 1 << 13  # refer
    if abi >= 3:
        fs |= 1 << 14  # truncate
    file_rights = EXECUTE | WRITE_FILE | READ_FILE | (1 << 14 if abi >= 3 else 0)

    class Ruleset(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    class Beneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]

    attr = Ruleset(fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(444, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    _sandbox_fail(lambda r: r < 0, ruleset, "landlock_create_ruleset")
    _, reals, devices, proc = view
    rules = [(p, READ_FILE | READ_DIR) for p in [*reals, *proc, "/proc/self"]]
    rules += [(d, READ_FILE | WRITE_FILE) for d in devices] + [(cfg["root"], fs & ~EXECUTE)]
    try:
        for path, allowed in rules:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    allowed &= file_rights
                rule = Beneath(allowed, fd)
                _sandbox_fail(bool, libc.syscall(445, ruleset, 1, ctypes.byref(rule), 0), f"landlock rule for {path}")
            finally:
                os.close(fd)
        _sandbox_fail(bool, libc.syscall(446, ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)


def _sandbox_setup(cfg):
    import ctypes
    import os
    import resource

    done, notes = [], []
    probe = cfg.get("probe", False)

    def could_not(layer, exc):
        if not probe:
            raise _SandboxSetupError(f"{layer}: {exc}") from exc
        notes.append(f"{layer}: {exc}")

    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    layers = cfg["read_isolation"]
    view = _sandbox_view(cfg) if layers else None
    userns = 0 if uid == 0 else 0x10000000  # CLONE_NEWUSER: a non-root user's way to the other namespaces
    want_ns = 0x20000 if "mount_namespace" in layers else 0  # CLONE_NEWNS
    netns = mountns = False
    if cfg["netns"] or want_ns:
        # CLONE_NEWNET | CLONE_NEWNS, else the network namespace alone (the mount layer then fails)
        for flags in dict.fromkeys((0x40000000 * cfg["netns"] | want_ns, 0x40000000 * cfg["netns"])):
            if flags and libc.unshare(flags | userns) == 0:
                netns, mountns = bool(flags & 0x40000000), bool(flags & want_ns)
                break
        if (netns or mountns) and userns:  # keep our own identity inside the new user namespace
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as fh:
                    fh.write(text)
    if netns:
        done.append("netns")
    if want_ns:
        try:
            if not mountns:
                raise OSError(0, "unshare(CLONE_NEWNS) refused")
            _sandbox_minimal_root(libc, cfg, view)
            done.append("mount_namespace")
        except OSError as exc:
            could_not("mount_namespace", exc)
    lim = cfg["limits"]
    for name, value in (("RLIMIT_AS", lim["as"]), ("RLIMIT_FSIZE", lim["fsize"]), ("RLIMIT_CORE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu"], lim["cpu"] + 1))
    done.append("rlimits")
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS (also what Landlock requires)
    abi = _sandbox_landlock_abi(libc)
    if "landlock" in layers:
        try:
            if not abi:
                raise OSError(0, "the kernel offers no Landlock")
            _sandbox_landlock(libc, abi, cfg, view)
            done.append("landlock")
        except OSError as exc:
            could_not("landlock", exc)
    # CAP_DAC_READ_SEARCH reads everything (open_by_handle_at even escapes a mount namespace): keep it only
    # when no minimal root exists and the interpreter may live below a directory only root can enter.
    keep = 0 if "mount_namespace" in done else 1 << 2

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    def set_capabilities(mask):
        header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
        data[0].effective = data[0].permitted = mask
        if libc.capset(ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), "capset failed")

    if cfg["uid"] is not None:
        try:
            libc.prctl(8, 1 if keep else 0, 0, 0, 0)  # PR_SET_KEEPCAPS
            os.setgroups([])
            os.setgid(cfg["gid"])
            os.setuid(cfg["uid"])
            set_capabilities(keep)
            done.append("uid")
        except OSError as exc:
            sys.stderr.write(f"sandbox: could not drop root: {exc}\n")
    elif userns and (netns or mountns):
        set_capabilities(0)  # the new user namespace gave us every capability inside it
    resource.setrlimit(resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))
    return done, notes, abi


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
        "mkdir", "mkdirat", "remove", "setrlimit", "prlimit", "prlimit64", "open_by_handle_at", "name_to_handle_at",
        "chroot",
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
    import os

    cfg = json.loads(sys.argv[1])
    try:
        done, notes, abi = _sandbox_setup(cfg)
    except _SandboxSetupError as exc:
        os.write(2, (cfg["setup_marker"] + str(exc) + "\n").encode("utf-8", "replace"))
        os._exit(cfg["setup_exit"])
    sys.dont_write_bytecode = True
    if cfg.get("probe"):
        try:
            with open(cfg["hidden"], "rb"):
                hidden = "readable"
        except OSError as exc:
            hidden = type(exc).__name__
        with open("/proc/self/status") as fh:
            caps = next(int(line.split()[1], 16) for line in fh if line.startswith("CapEff:"))
        print(json.dumps({"done": done, "notes": notes, "landlock_abi": abi, "uid": os.getuid(),
                          "netns": os.readlink("/proc/self/ns/net"), "hidden": hidden, "capabilities": caps}))
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
    del _sandbox_setup, _sandbox_guard, _sandbox_main, _sandbox_view, _sandbox_minimal_root, _sandbox_fail
    del _sandbox_landlock, _sandbox_landlock_abi, _SandboxSetupError
    globals().pop("_sandbox_boot", None)
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
    from harness.redaction import is_secret_name, secret_values

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
