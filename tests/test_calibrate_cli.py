"""`python -m harness.calibrate`: cached by content, independent of batch size, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.calibrate import main
from harness.calibration.statistics import CalibrationStatistics

FIXTURE = Path(__file__).parent / "fixtures" / "calibration" / "code_instruct.jsonl"


def _run(model, out, *extra):
    return main([str(model), "--data", str(FIXTURE), "--samples", "4", "--length", "64", "--out", str(out), *extra])


def test_cli_writes_statistics_keyed_by_content(zoo_dir, tmp_path, capsys):
    model = zoo_dir / "glm4_moe"
    assert _run(model, tmp_path, "--batch-size", "4") == 0
    (key_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    manifest = json.loads((key_dir / "manifest.json").read_text())
    assert manifest["family"] == "glm4_moe" and manifest["samples"] == 4 and manifest["length"] == 64
    stats = CalibrationStatistics.load(key_dir)
    assert set(stats.layers) == set(manifest["moe_layers"]) == {1, 2}
    for layer in stats.layers.values():
        assert layer.count.sum() == manifest["tokens"] * manifest["top_k"]

    # Batch size and sequential mode are not part of the key: the result is reused.
    first = (key_dir / "statistics.safetensors").stat().st_mtime_ns
    assert _run(model, tmp_path, "--batch-size", "1", "--sequential") == 0
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == [key_dir]
    assert (key_dir / "statistics.safetensors").stat().st_mtime_ns == first

    # An optional statistic changes the key; its routed statistics agree with the first run.
    assert _run(model, tmp_path, "--batch-size", "3", "--router-similarity", "--sequential") == 0
    dirs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(dirs) == 2
    other = CalibrationStatistics.load(next(d for d in dirs if d != key_dir))
    for index, layer in stats.layers.items():
        torch.testing.assert_close(other.layers[index].reap_sum, layer.reap_sum, rtol=1e-6, atol=0)
        assert other.layers[index].router_gram is not None
    assert "counts:" in capsys.readouterr().out


def test_cli_rejects_unsupported_family_and_missing_data(tmp_path, zoo_dir, capsys):
    (tmp_path / "dense").mkdir()
    (tmp_path / "dense" / "config.json").write_text('{"model_type": "llama"}')
    assert _run(tmp_path / "dense", tmp_path / "out") == 2
    assert "not a supported MoE family" in capsys.readouterr().err
    code = main([str(zoo_dir / "qwen3_moe"), "--data", str(tmp_path / "missing.jsonl"), "--samples", "2",
                 "--length", "16", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "missing.jsonl" in capsys.readouterr().err
