"""Shared fixtures: the zoo is built once per session; no vLLM process may outlive the suite."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory) -> Path:
    """All zoo families, built once: zoo_dir / <family>."""
    from harness.zoo import build_zoo

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
