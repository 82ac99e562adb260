"""The code sandbox runs ordinary programs, and hostile ones end as failures that change nothing outside.

Each hostile program is checked twice where it matters: with the audit hook (the run is
stopped and says why) and, for the kernel layers, with the hook off (network namespace,
unprivileged uid, RLIMIT_NPROC must stop it on their own).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from harness.sandbox.api import isolation, run_many, run_python


@pytest.fixture
def victim(tmp_path) -> Path:
    """A directory outside any sandbox with a file in it; hostile code tries to destroy both."""
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "data.txt").write_text("keep me")
    return folder


def _intact(folder: Path) -> bool:
    return sorted(p.name for p in folder.iterdir()) == ["data.txt"] and (folder / "data.txt").read_text() == "keep me"


@pytest.fixture
def listener():
    """A TCP server on loopback that records whether anything connected."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    yield server
    server.close()


def _nobody_connected(server: socket.socket) -> bool:
    try:
        conn, _ = server.accept()
    except TimeoutError:
        return True
    conn.close()
    return False


def test_runs_a_program_with_stdin_files_and_collected_output(tmp_path):
    source = ("import os, sys\nprint(sys.stdin.read()[::-1])\nprint(open('in/data.txt').read())\n"
              "open('out.bin', 'wb').write(bytes(range(5)))\nprint(os.getcwd())\n")
    result = run_python(source, stdin="abc", files={"in/data.txt": "hello"}, collect={"out.bin": tmp_path / "o.bin"})
    assert result.ok and result.returncode == 0 and not result.timed_out and result.failure == ""
    reversed_stdin, data, cwd = result.stdout.splitlines()
    assert (reversed_stdin, data) == ("cba", "hello")
    assert (tmp_path / "o.bin").read_bytes() == bytes(range(5))
    assert not Path(cwd).exists(), "the temporary directory must be deleted after the run"


def test_errors_and_environment(monkeypatch):
    failed = run_python("raise ValueError('boom')")
    assert failed.returncode == 1 and failed.failure == "exit 1" and "ValueError: boom" in failed.stderr
    monkeypatch.setenv("HARNESS_SECRET_TOKEN", "s3cret")
    env = run_python("import os, json; print(json.dumps(dict(os.environ)))", env={"EXTRA": "1"})
    seen = json.loads(env.stdout)
    assert "HARNESS_SECRET_TOKEN" not in seen and seen["EXTRA"] == "1" and seen["HOME"] == seen["TMPDIR"]


def test_run_many_keeps_input_order():
    results = run_many([f"print({i} * {i})" for i in range(5)] + [{"source": "print(input())", "stdin": "x\n"}])
    assert [r.stdout.strip() for r in results] == ["0", "1", "4", "9", "16", "x"]


def test_infinite_loop_and_sleep_are_killed_at_the_timeout():
    for source in ("while True:\n    pass\n", "import time\ntime.sleep(1000)\n"):
        started = time.monotonic()
        result = run_python(source, timeout_s=2)
        assert result.timed_out and result.failure == "timeout"
        assert time.monotonic() - started < 10


@pytest.mark.parametrize("source", [
    "x = bytearray(64 * 1024 ** 3)\n",
    "blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 1024 ** 2))\n",
])
def test_huge_allocation_fails_with_memory(source):
    result = run_python(source, memory_mb=512, timeout_s=20)
    assert result.failure == "memory", (result.failure, result.stderr[-500:])


def test_output_flood_stops_at_the_file_size_limit():
    result = run_python("while True:\n    print('x' * 100000)\n", file_size_mb=2, timeout_s=20)
    assert result.failure == "output limit" and len(result.stdout) <= 2 * 1024 ** 2


HOSTILE = {
    "fork loop": ("import os\nwhile True:\n    os.fork()\n", "forbidden: process creation"),
    "subprocess": ("import subprocess\nsubprocess.run(['rm', '-rf', {victim!r}])\n", "forbidden: process creation"),
    "raw fork_exec": ("import _posixsubprocess\n_posixsubprocess.fork_exec()\n", "forbidden: process creation"),
    "os.system": ("import os\nos.system('rm -rf {victim}')\n", "forbidden: process creation"),
    "delete a file outside": ("import os\nos.remove({victim!r} + '/data.txt')\n", "forbidden: os.remove"),
    "delete a tree outside": ("import shutil\nshutil.rmtree({victim!r})\n", "forbidden: shutil.rmtree"),
    "overwrite outside": ("open({victim!r} + '/data.txt', 'w').write('gone')\n", "forbidden: write outside"),
    "rename outside": ("import os\nos.rename({victim!r} + '/data.txt', 'stolen.txt')\n", "forbidden: os.rename"),
    "write through a symlink": ("import os\nos.symlink({victim!r}, 'link')\nopen('link/new.txt', 'w').write('x')\n",
                                "forbidden: write outside"),
    "relative os.open": ("import os\nfd = os.open('.', os.O_RDONLY)\nos.open('x', os.O_WRONLY | os.O_CREAT)\n",
                         "forbidden: os.open for writing"),
    "ctypes unlink": ("import ctypes\nctypes.CDLL(None).unlink({victim!r}.encode() + b'/data.txt')\n",
                      "forbidden: ctypes access to unlink"),
    "socket": ("import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n", "forbidden: network"),
    "raw _socket": ("import _socket\n_socket.socket()\n", "forbidden: network"),
    "http": ("import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/')\n", "forbidden: network"),
    "kill the parent": ("import os\nos.kill(os.getppid(), 9)\n", "forbidden: os.kill"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_code_is_stopped_and_changes_nothing(name, victim, listener):
    template, expected = HOSTILE[name]
    source = template.format(victim=str(victim), port=listener.getsockname()[1])
    result = run_python(source, timeout_s=20)
    assert result.failure.startswith(expected), (result.failure, result.stderr[-800:])
    assert not result.ok
    assert _intact(victim)
    assert _nobody_connected(listener)


KERNEL_PROBE = """
import json, os, socket, threading
out = {{}}
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
    out["connect"] = "connected"
except OSError as exc:
    out["connect"] = type(exc).__name__
try:
    os.remove({victim!r} + "/data.txt")
    out["remove"] = "removed"
except OSError as exc:
    out["remove"] = type(exc).__name__
try:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    out["fork"] = "forked"
except OSError as exc:
    out["fork"] = type(exc).__name__
try:
    threading.Thread(target=print).start()
    out["thread"] = "started"
except RuntimeError as exc:
    out["thread"] = type(exc).__name__
out["uid"] = os.getuid()
print(json.dumps(out))
"""


def _granted(layers: list[str]) -> None:
    """Skip unless this machine grants every one of these read-isolation layers."""
    missing = [layer for layer in layers if layer not in isolation()["read_isolation"]]
    if missing:
        reasons = "; ".join(isolation()["unavailable"]) or "the probe could not confine reads with it"
        pytest.skip(f"this machine does not grant {', '.join(missing)} ({reasons})")


@pytest.mark.parametrize("read_isolation", [[], ["mount_namespace"], ["landlock"]],
                         ids=["uid only", "mount", "landlock"])
def test_kernel_layers_hold_without_the_audit_hook(victim, listener, read_isolation):
    layers = isolation()
    assert layers["audit_hook"] and layers["rlimits"]
    if not layers["network_namespace"]:
        pytest.skip("this machine does not allow a network namespace")
    _granted(read_isolation)
    result = run_python(KERNEL_PROBE.format(port=listener.getsockname()[1], victim=str(victim)), audit_hook=False,
                        read_isolation=read_isolation)
    assert result.ok, result.stderr
    seen = json.loads(result.stdout)
    assert seen["connect"] != "connected" and _nobody_connected(listener)
    assert seen["fork"] != "forked" and seen["thread"] != "started"
    if "mount_namespace" in read_isolation:  # the victim is not even in the sandbox's view
        assert seen["remove"] == "FileNotFoundError"
    elif read_isolation or layers["unprivileged_uid"]:
        assert seen["remove"] == "PermissionError"
    if layers["unprivileged_uid"]:
        assert seen["uid"] != 0
    if layers["parent_is_root"] or read_isolation or seen["remove"] != "removed":
        assert _intact(victim)


def test_threads_are_available_when_asked_for():
    source = "import threading\nt = threading.Thread(target=print, args=('in thread',))\nt.start()\nt.join()\n"
    assert run_python(source).failure != ""
    allowed = run_python(source, max_threads=2)
    assert allowed.ok and allowed.stdout.strip() == "in thread"


# -- reads: a minimal filesystem view --------------------------------------------------------
READ_PROBE = """
import json, os
out = {}
for name, path in json.loads(os.environ["TARGETS"]).items():
    try:
        if os.path.isdir(path):
            out[name] = "listed " + " ".join(sorted(os.listdir(path)))
        else:
            with open(path, "rb") as fh:
                out[name] = "read " + fh.read(200).decode(errors="replace")
    except OSError as exc:
        out[name] = type(exc).__name__
try:
    with open(os.path.dirname(os.getcwd()) + "/planted-by-the-sandbox", "w") as fh:
        fh.write("x")
    out["write beside"] = "wrote"
except OSError as exc:
    out["write beside"] = type(exc).__name__
print(json.dumps(out))
"""
LAYER_SETS = [["mount_namespace"], ["landlock"], None]
LAYER_IDS = ["mount", "landlock", "default"]


@pytest.fixture
def secrets_outside(tmp_path):
    """Files a sandbox must not read: in the harness user's home, in a sweep's work dir, in another sample's dir."""
    import tempfile
    import threading

    token = "do-not-read-" + tmp_path.name
    home = tempfile.NamedTemporaryFile("w", dir=Path.home(), prefix=".harness-sandbox-test-", delete=False)
    with home:
        home.write(token)
    other = None
    try:
        work = tmp_path / "work" / "sweep" / "eval" / "abc"
        work.mkdir(parents=True)
        (work / "samples.jsonl").write_text(token)
        # another sample, still running: it waits until its directory holds "release"
        samples = tmp_path / "samples"
        samples.mkdir()
        waiter = "import os, time\nwhile not os.path.exists('release'):\n    time.sleep(0.02)\n"
        other = threading.Thread(target=run_python, args=(waiter,),
                                 kwargs={"files": {"secret.txt": token}, "tmp_root": str(samples), "timeout_s": 60})
        other.start()
        deadline = time.monotonic() + 30
        while not (found := list(samples.glob("harness-sandbox-*/secret.txt"))) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert found, "the other sample never started"
        yield token, {"shadow": "/etc/shadow", "home": home.name, "work file": str(work / "samples.jsonl"),
                      "work dir": str(tmp_path / "work"), "other sample": str(found[0]),
                      "other sample dir": str(found[0].parent), "parent environ": f"/proc/{os.getpid()}/environ"}
    finally:
        for release in samples.glob("harness-sandbox-*/") if other is not None else []:
            (release / "release").write_text("")
        if other is not None:
            other.join()
        os.unlink(home.name)


def _read_probe(targets: dict[str, str], **kwargs):
    result = run_python(READ_PROBE, env={"TARGETS": json.dumps(targets)}, audit_hook=False, tmp_root=None, **kwargs)
    assert result.ok, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("read_isolation", LAYER_SETS, ids=LAYER_IDS)
def test_reads_outside_the_view_fail(secrets_outside, read_isolation):
    """Kernel layers only (audit hook off): nothing outside the interpreter, libraries and own dir is readable."""
    token, targets = secrets_outside
    _granted(read_isolation or [])
    if read_isolation is None and not isolation()["read_isolation"]:
        pytest.skip("this machine grants no read isolation layer")
    seen = _read_probe(targets, read_isolation=read_isolation)
    readable = {name: outcome for name, outcome in seen.items() if not outcome.endswith("Error")}
    assert not readable, readable
    assert token not in json.dumps(seen)


def test_without_read_isolation_a_root_harness_leaks_files(secrets_outside):
    """The check above can fail: without the layers, the sandbox reads what the harness can (CAP_DAC_READ_SEARCH)."""
    token, targets = secrets_outside
    if not isolation()["unprivileged_uid"]:
        pytest.skip("only a root harness keeps CAP_DAC_READ_SEARCH for its sandboxes")
    seen = _read_probe(targets, read_isolation=[])
    assert token in seen["home"] and token in seen["other sample"] and token in seen["work file"]


@pytest.mark.parametrize("read_isolation", [["mount_namespace"]], ids=["mount"])
def test_the_minimal_root_holds_only_what_python_needs(read_isolation):
    _granted(read_isolation)
    source = ("import json, os\nlisted = {n: sorted(os.listdir(p)) for n, p in (('etc', '/etc'), ('proc', '/proc'), "
              "('dev', '/dev'), ('tmp', os.path.dirname(os.getcwd())))}\n"
              "caps = open('/proc/self/status').read().split('CapEff:')[1].split()[0]\n"
              "print(json.dumps({**listed, 'cwd': os.getcwd(), 'caps': caps}))\n")
    result = run_python(source, read_isolation=read_isolation, audit_hook=False)
    assert result.ok, result.stderr
    seen = json.loads(result.stdout)
    assert seen["etc"] == ["ld.so.cache"] and seen["proc"] == ["meminfo", "self"]
    assert seen["dev"] == ["fd", "null", "random", "stderr", "stdin", "stdout", "urandom", "zero"]
    # Its own temporary directory, and nothing else but the path down to the interpreter's installation
    # when that lives in the same folder (a checkout under /tmp: its .venv is bound read-only).
    parent = Path(seen["cwd"]).parent
    installation = {Path(os.path.realpath(p)) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    allowed = {Path(seen["cwd"]).name} | {p.relative_to(parent).parts[0] for p in installation
                                          if p.is_relative_to(parent)}
    assert Path(seen["cwd"]).name in seen["tmp"] and set(seen["tmp"]) <= allowed, "only its own temporary directory"
    assert int(seen["caps"], 16) == 0, "no capability survives in the minimal root"


FILE_HANDLE_ESCAPE = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)

class Handle(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint), ("kind", ctypes.c_int), ("data", ctypes.c_ubyte * 128)]

root = Handle(8, 1)  # FILEID_INO32_GEN of inode 2: the root directory of an ext2/3/4 filesystem
root.data[0] = 2
fd = libc.open_by_handle_at(os.open(".", os.O_RDONLY), ctypes.byref(root), os.O_RDONLY)
print(json.dumps({"escaped": sorted(os.listdir(fd)) if fd >= 0 else os.strerror(ctypes.get_errno())}))
"""


@pytest.mark.parametrize("read_isolation", LAYER_SETS, ids=LAYER_IDS)
def test_no_escape_by_file_handle(read_isolation):
    """open_by_handle_at (what CAP_DAC_READ_SEARCH allows) must not reach the host's root directory."""
    _granted(read_isolation or [])
    result = run_python(FILE_HANDLE_ESCAPE, read_isolation=read_isolation, audit_hook=False)
    assert result.ok, result.stderr
    assert not isinstance(json.loads(result.stdout)["escaped"], list), result.stdout


def test_secrets_are_refused_in_the_sandbox_environment(monkeypatch):
    from harness.sandbox.api import SandboxError

    for env in ({"HF_TOKEN": "hf_abcdefgh"}, {"OPENAI_API_KEY": "sk-1234567890"}, {"judge_secret": "x" * 12}):
        with pytest.raises(SandboxError, match="secrets"):
            run_python("print(1)", env=env)
    monkeypatch.setenv("HARNESS_TEST_TOKEN", "tok-planted-1234")
    with pytest.raises(SandboxError, match="secrets"):
        run_python("print(1)", env={"INNOCENT": "tok-planted-1234"})


def test_a_failure_reason_is_bounded():
    from harness.sandbox.api import KEPT_FAILURE_CHARS, clip_output

    result = run_python("open('/' + 'x' * 200 + '/' + 'y' * 100000, 'w')\n")
    assert result.failure.startswith("forbidden: write outside") and len(result.failure) <= KEPT_FAILURE_CHARS + 60
    assert clip_output("a" * 10) == "a" * 10
    clipped = clip_output("h" * 5000 + "t" * 5000, 100)
    assert clipped.startswith("h" * 50) and clipped.endswith("t" * 50) and "9900 characters cut" in clipped


def test_a_machine_without_read_isolation_says_so_once(monkeypatch, caplog):
    import harness.sandbox.api as sandbox

    monkeypatch.setattr(sandbox, "READ_ISOLATION_LAYERS", ())
    sandbox._probe.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="harness.sandbox.api"):
            assert isolation()["read_isolation"] == [] and isolation()["read_isolation"] == []
            run_python("print(1)")
        warnings = [r for r in caplog.records if "neither a mount namespace nor Landlock" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        sandbox._probe.cache_clear()
