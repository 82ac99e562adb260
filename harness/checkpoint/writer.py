"""write_checkpoint: plan + source checkpoint -> a compressed checkpoint directory, atomically.

The directory holds the shards (`shard_writer`), a fresh index, config.json with the new
expert count, the source's tokenizer and generation files, plan.json and recipe.json (with
the parameter counts of `counting`). It is written beside `out` under a temporary name and
renamed into place, so a killed write leaves nothing at `out`.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.archs import get_arch, read_config
from harness.archs.base import MoEArch
from harness.checkpoint.counting import parameter_counts
from harness.checkpoint.errors import CheckpointError
from harness.checkpoint.identity import model_fingerprint
from harness.checkpoint.plan_outputs import plan_outputs
from harness.checkpoint.roles import TensorRoles
from harness.checkpoint.shard_writer import write_shards
from harness.checkpoint.shards import INDEX_NAME, ShardReader
from harness.plan import Plan
from harness.util.atomic import make_temp_dir

MATERIALISATIONS = ("shared_slots",)
# Top-level files of the source that are not copied: weights (rewritten), and what the writer regenerates.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")
_REGENERATED = {"config.json", INDEX_NAME, "pytorch_model.bin.index.json", "recipe.json", "plan.json"}


@dataclass
class CheckpointInfo:
    path: Path
    total_params: int
    activated_params: int
    recipe: dict[str, Any]


def write_checkpoint(plan: Plan, source: str | Path, out: str | Path, *, materialisation: str = "shared_slots",
                     recipe_extra: dict | None = None, progress: bool = True, overwrite: bool = False
                     ) -> CheckpointInfo:
    """Apply `plan` to the checkpoint at `source` and write the result to `out` (atomically).

    Pruning plans drop and renumber experts; merging plans use `materialisation`
    ("shared_slots": every router slot kept, a cluster's members share the merged weights).
    The directory holds the shards, a fresh index, the updated config.json, the source's
    tokenizer and generation files, plan.json and recipe.json.
    """
    import harness

    source, out = Path(source), Path(out)
    if materialisation not in MATERIALISATIONS:
        raise ValueError(f"unknown materialisation {materialisation!r}; available: {', '.join(MATERIALISATIONS)}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; remove it or pass overwrite=True")
    if out.resolve() == source.resolve():
        raise ValueError("the output directory must differ from the source checkpoint")
    config = read_config(source)
    arch = get_arch(config)
    src = ShardReader(source)
    job = plan_outputs(plan, src, TensorRoles(arch, src.tensors), arch, config)
    new_config = _new_config(config, arch, job.new_count, job.dropped)
    recipe: dict[str, Any] = {
        "harness_version": harness.__version__,
        "method": plan.method,
        "method_config": plan.method_config,
        "ratio": plan.ratio,
        "kind": plan.kind,
        "calibration_key": plan.calibration_key,
        "plan_hash": plan.plan_hash(),
        "plan_format_version": plan.format_version,
        "materialisation": materialisation if plan.kind == "merge" else "pruned",
        "family": arch.model_type,
        "expert_count_key": arch.expert_count_key,
        # distinct: new experts per layer, one number when every layer has the same count, else
        # {layer: count} (M-SMoE's global dominance); distinct_total sums them over the layers.
        "experts_per_layer": {"source": arch.num_experts, "router_slots": job.new_count,
                              "distinct": plan.num_groups if plan.uniform else
                              {str(i): n for i, n in sorted(plan.groups_per_layer.items())},
                              "distinct_total": plan.total_groups},
        "quantisation": job.quantisation,
        "source": {"path": str(source.resolve()), "fingerprint": model_fingerprint(source)},
        "dropped_tensors": job.dropped,
    }
    clash = sorted(set(recipe_extra or {}) & (set(recipe) | {"total_params", "activated_params"}))
    if clash:
        raise ValueError(f"recipe_extra may not override {clash}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, prefix=f".{out.name}.tmp-")
    try:
        weight_map = write_shards(job, src, tmp, progress)
        total_size = sum(o.nbytes for o in job.outputs)
        _write_json(tmp / INDEX_NAME, {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(
            weight_map.items()))})
        _write_json(tmp / "config.json", new_config)
        recipe["copied_files"] = _copy_side_files(source, tmp)
        plan.save(tmp / "plan.json")
        counts, source_counts = parameter_counts(tmp), parameter_counts(source)
        recipe["source"].update(total_params=source_counts.total, activated_params=source_counts.activated)
        recipe.update(total_params=counts.total, activated_params=counts.activated,
                      routed_experts=counts.routed_experts, **(recipe_extra or {}))
        _write_json(tmp / "recipe.json", recipe)
        _install(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CheckpointInfo(path=out, total_params=counts.total, activated_params=counts.activated, recipe=recipe)


def _new_config(config: dict, arch: MoEArch, new_count: int, dropped: list[str]) -> dict:
    new = copy.deepcopy(config)
    target = arch.text_config(new)  # the family's settings, nested in a multimodal wrapper's config
    keys = [k for k in (arch.expert_count_key, *arch.expert_count_aliases) if k in target]
    if not keys:
        raise CheckpointError(f"config.json has no {arch.expert_count_key!r} to update")
    for key in keys:
        target[key] = new_count
    if dropped and arch.mtp_layers_key and target.get(arch.mtp_layers_key):
        target[arch.mtp_layers_key] = 0  # its layers are not in the plan and were dropped
    return new


def _copy_side_files(source: Path, out: Path) -> list[str]:
    """Tokenizer, chat template, generation config and other top-level files (not weights)."""
    copied = []
    for path in sorted(source.iterdir()):
        if path.is_file() and path.name not in _REGENERATED and not path.name.endswith(_WEIGHT_SUFFIXES):
            shutil.copyfile(path, out / path.name)  # new file: the umask decides its mode
            copied.append(path.name)
    return copied


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _install(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished directory into place; an old one is replaced only when asked."""
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} already exists; remove it or pass overwrite=True")
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, trash / out.name)
        os.rename(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, out)
