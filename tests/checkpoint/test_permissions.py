"""Outputs get the umask's permissions, not tempfile's owner-only ones: a group-shared work directory works."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from harness.archs import get_arch
from harness.checkpoint import write_checkpoint
from harness.plan import ExpertGroup, LayerPlan, Plan
from harness.sweep.store import Store
from harness.util.atomic import atomic_write, make_temp_dir


@pytest.fixture
def group_umask():
    previous = os.umask(0o002)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_files_store_records_and_scratch_folders(tmp_path, group_umask):
    written = atomic_write(tmp_path / "a.txt", lambda p: Path(p).write_text("x"))
    assert _mode(written) == 0o664
    assert _mode(make_temp_dir(tmp_path, "scratch-")) == 0o775
    store = Store(tmp_path / "work")
    store.mark_done("plan", "k", settings={"ratio": 0.5})
    assert _mode(store.dir("plan", "k") / "done.json") == 0o664


def test_checkpoint_folder_and_files(zoo_dir, tmp_path, group_umask):
    arch = get_arch(zoo_dir / "qwen3_moe")
    plan = Plan(method="test", ratio=0.0, kind="prune",
                layers={i: LayerPlan(num_experts=arch.num_experts,
                                     groups=[ExpertGroup.single(j) for j in range(arch.num_experts)])
                        for i in range(arch.config["num_hidden_layers"])})
    out = tmp_path / "ckpt"
    write_checkpoint(plan, zoo_dir / "qwen3_moe", out, progress=False)
    assert _mode(out) == 0o775
    modes = {p.name: _mode(p) for p in out.iterdir()}
    assert modes and set(modes.values()) == {0o664}, modes
