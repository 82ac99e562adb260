"""The sandbox's child program: runs first in the child (`python -I -B`), installs the isolation layers
the parent asked for (JSON config in argv[1]), then executes the untrusted code in its place.

It is a real module so that linters and readers see it, but it is never imported: `harness.sandbox.api`
reads this file's text and runs it as the child's `-c` program. It must therefore import nothing the
untrusted code could have shadowed, and nothing outside the standard library.
"""
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


if __name__ == "__main__":  # run as the child program, never on import
    _sandbox_code = _sandbox_main()
    if _sandbox_code is not None:
        sys.argv = [_sandbox_code[1]]
        __file__, _sandbox_code = _sandbox_code[1], _sandbox_code[0]
        del _sandbox_setup, _sandbox_guard, _sandbox_main, _sandbox_view, _sandbox_minimal_root, _sandbox_fail
        del _sandbox_landlock, _sandbox_landlock_abi, _SandboxSetupError
        globals().pop("_sandbox_boot", None)
        __doc__ = None  # the untrusted code's module starts as a plain `python -c` one
        exec(_sandbox_code, globals())
