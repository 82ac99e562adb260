"""`python -m harness.calibrate`: cached by content, independent of batch size, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.calibrate import main
from harness.calibration.statistics import CalibrationStatistics

FIXTURE = Path(__file__).parents[1] / "fixtures" / "calibration" / "code_instruct.jsonl"


def _run(model, out, *extra):
    return main([str(model), "--data", str(FIXTURE), "--samples", "4", "--length", "64", "--out", str(out), *extra])


def test_cli_writes_statistics_keyed_by_content(zoo_dir, tmp_path, capsys):
    model = zoo_dir / "glm4_moe"
    assert _run(model, tmp_path, "--batch-size", "4") == 0
    (key_dir,) = [p for p in (tmp_path / "calibration").iterdir() if p.is_dir()]
    manifest = json.loads((key_dir / "manifest.json").read_text())
    assert manifest["family"] == "glm4_moe" and manifest["samples"] == 4 and manifest["length"] == 64
    stats = CalibrationStatistics.load(key_dir)
    assert set(stats.layers) == set(manifest["moe_layers"]) == {1, 2}
    for layer in stats.layers.values():
        assert layer.count.sum() == manifest["tokens"] * manifest["top_k"]

    # Batch size and sequential mode are not part of the key: the result is reused.
    first = (key_dir / "statistics.safetensors").stat().st_mtime_ns
    assert _run(model, tmp_path, "--batch-size", "1", "--sequential") == 0
    assert [p for p in (tmp_path / "calibration").iterdir() if p.is_dir()] == [key_dir]
    assert (key_dir / "statistics.safetensors").stat().st_mtime_ns == first

    # An optional statistic changes the key; its routed statistics agree with the first run.
    assert _run(model, tmp_path, "--batch-size", "3", "--router-similarity", "--gated-out", "--sequential") == 0
    dirs = sorted(p for p in (tmp_path / "calibration").iterdir() if p.is_dir())
    assert len(dirs) == 2
    other = CalibrationStatistics.load(next(d for d in dirs if d != key_dir))
    for index, layer in stats.layers.items():
        torch.testing.assert_close(other.layers[index].reap_sum, layer.reap_sum, rtol=1e-6, atol=0)
        assert other.layers[index].router_gram is not None and other.layers[index].gated_out_sum is not None
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


def _key_dirs(out: Path) -> list[Path]:
    return sorted(p for p in (out / "calibration").iterdir() if p.is_dir())


def test_device_auto_falls_back_to_the_cpu_and_says_so(caplog):
    import logging

    from harness.calibration.run import CalibrationDeviceError, resolve_devices

    if torch.cuda.is_available():  # pragma: no cover - the accelerator machine
        assert resolve_devices("auto") == [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        return
    with caplog.at_level(logging.INFO, logger="harness.calibration"):
        assert resolve_devices("auto") == [torch.device("cpu")]
    assert "no GPU is visible, calibrating on the CPU" in caplog.text
    for wanted in ("cuda", "cuda:1"):
        try:
            resolve_devices(wanted)
        except CalibrationDeviceError as exc:
            assert "no GPU is visible" in str(exc) and "use auto or cpu" in str(exc)
        else:
            raise AssertionError(f"{wanted} on a machine without a GPU must fail")


def test_dtype_is_part_of_the_key_device_is_not_and_force_recomputes(zoo_dir, tmp_path):
    model = zoo_dir / "qwen3_moe"
    assert _run(model, tmp_path, "--device", "auto") == 0
    (float32,) = _key_dirs(tmp_path)
    assert json.loads((float32 / "manifest.json").read_text())["dtype"] == "float32"  # auto: the checkpoint's
    assert _run(model, tmp_path, "--device", "cpu", "--dtype", "float32") == 0
    assert _key_dirs(tmp_path) == [float32], "the device or an explicit default dtype changed the key"

    assert _run(model, tmp_path, "--dtype", "bfloat16") == 0
    (bf16,) = [d for d in _key_dirs(tmp_path) if d != float32]
    a, b = CalibrationStatistics.load(float32), CalibrationStatistics.load(bf16)
    assert b.manifest["dtype"] == "bfloat16" and b.manifest["run"]["devices"] == ["cpu"]
    # Same tokens, same routing machinery, other arithmetic: close, not equal.
    assert any(not torch.equal(a.layers[i].ean_sum, b.layers[i].ean_sum) for i in a.layers)
    for i in a.layers:
        torch.testing.assert_close(b.layers[i].ean_sum, a.layers[i].ean_sum, rtol=0.1, atol=1e-3)

    stamp = (float32 / "statistics.safetensors").stat().st_mtime_ns
    assert _run(model, tmp_path) == 0
    assert (float32 / "statistics.safetensors").stat().st_mtime_ns == stamp, "reused without --force"
    assert _run(model, tmp_path, "--force") == 0
    assert (float32 / "statistics.safetensors").stat().st_mtime_ns != stamp, "--force must recompute"
