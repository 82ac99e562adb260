"""The code sandbox runs ordinary programs, and hostile ones end as failures that change nothing outside.

Each hostile program is checked twice where it matters: with the audit hook (the run is
stopped and says why) and, for the kernel layers, with the hook off (network namespace,
unprivileged uid, RLIMIT_NPROC must stop it on their own).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from harness.sandbox import isolation, run_many, run_python


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
    "relative os.open": ("import os\nfd = os.open('/', os.O_RDONLY)\nos.open('x', os.O_WRONLY | os.O_CREAT)\n",
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


def test_kernel_layers_hold_without_the_audit_hook(victim, listener):
    layers = isolation()
    assert layers["audit_hook"] and layers["rlimits"]
    if not layers["network_namespace"]:
        pytest.skip("this machine does not allow a network namespace")
    result = run_python(KERNEL_PROBE.format(port=listener.getsockname()[1], victim=str(victim)), audit_hook=False)
    assert result.ok, result.stderr
    seen = json.loads(result.stdout)
    assert seen["connect"] != "connected" and _nobody_connected(listener)
    assert seen["fork"] != "forked" and seen["thread"] != "started"
    if layers["unprivileged_uid"]:
        assert seen["uid"] != 0 and seen["remove"] == "PermissionError"
    if layers["parent_is_root"] or seen["remove"] != "removed":
        assert _intact(victim)


def test_threads_are_available_when_asked_for():
    source = "import threading\nt = threading.Thread(target=print, args=('in thread',))\nt.start()\nt.join()\n"
    assert run_python(source).failure != ""
    allowed = run_python(source, max_threads=2)
    assert allowed.ok and allowed.stdout.strip() == "in thread"
