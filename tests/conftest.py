"""Shared fixtures: the zoo is built once per session; no vLLM process may outlive the suite."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# No test may reach the network: hub ids resolve from (fake) Hugging Face caches only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory) -> Path:
    """All zoo families, built once: zoo_dir / <family>."""
    from harness.standins.zoo import build_zoo

    root = tmp_path_factory.mktemp("zoo")
    build_zoo(root)
    return root


def vllm_descendants() -> list[psutil.Process]:
    """vLLM processes started (directly or not) by this test session."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "vllm" in " ".join(proc.cmdline()).lower() or proc.name().lower().startswith("vllm"):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="session", autouse=True)
def no_leftover_servers():
    """After the whole suite, no vLLM server or engine process may still run."""
    yield
    leftovers = [p for p in vllm_descendants() if p.status() != psutil.STATUS_ZOMBIE]
    assert not leftovers, f"vLLM processes left behind: {[(p.pid, p.cmdline()[:4]) for p in leftovers]}"


class ServedTiny:
    """One vLLM server of the tiny qwen3_moe zoo model, shared by every test that only needs "a served model"."""

    def __init__(self, server, model_dir: Path):
        from harness.tasks.base import Endpoint

        self.server = server
        self.model_dir = model_dir
        self.name = "tiny"
        self.base_url = server.base_url
        self.endpoint = Endpoint(base_url=server.base_url, model=self.name, tokenizer=str(model_dir))


@pytest.fixture(scope="session")
def served_tiny(tmp_path_factory):
    """Each vLLM start costs 30-60 s here: the task tests share this one (float32, 2048 tokens)."""
    from harness.serving.vllm import VLLMServer
    from harness.standins.zoo import build_model

    root = tmp_path_factory.mktemp("served_tiny")
    model_dir = build_model("qwen3_moe", root / "qwen3_moe")
    with VLLMServer(model_dir, served_model_name="tiny", dtype="float32", max_model_len=2048,
                    log_path=root / "vllm.log") as server:
        yield ServedTiny(server, model_dir)


def hf_prompt_logprobs(model_dir, token_ids: list[int]):
    """log p(token_i | tokens_<i) and the next-token distribution, from transformers (the reference)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([token_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    return logprobs[:-1].gather(1, ids[0, 1:, None])[:, 0], logprobs[-1]
