"""Checks that run after validation and before any heavy work, on what the sweep still has to do.

Validation (harness.sweep.config) checks the file; these check the world the sweep will meet: the judge
answers, the checkpoints fit the disk, the model fits the GPUs at the chosen tensor parallelism.
Each returns problems as sentences that say what to change; the sweep stops before calibration when
there are any (a checkpoint that does not fit fails its own job instead: `disk_problem`).
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from harness.sweep.config import SweepConfig
from harness.sweep.grid import Grid
from harness.sweep.store import Store

JUDGE_PING_TIMEOUT_S = 30.0


def free_bytes(path: str | Path) -> int:
    """Free bytes (for an unprivileged writer) on the filesystem that holds `path` or would hold it.

    The one probe of free space: tests replace it (monkeypatch) to fake a full disk."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def judged_evaluations_to_do(cfg: SweepConfig, grid: Grid, store: Store, force: Collection[str] = ()) -> list[str]:
    """The judged tasks with an evaluation still to do (a judge is needed only then)."""
    from harness.tasks import get_task_class

    judged = [t.name for t in grid.tasks if get_task_class(t.name).needs_judge]
    return [t for t in judged if any("eval" in force or not store.is_done("eval", v.eval_keys[t])
                                     for mj in grid.models for v in mj.variants)]


def ping_judge(base_url: str, model: str, api_key_env: str | None, timeout_s: float = JUDGE_PING_TIMEOUT_S
               ) -> str | None:
    """One tiny chat request (1 token) to the judge: None when it answers, else what is wrong.

    Any HTTP answer counts, a 4xx included (a judge may reject a one-word prompt), except 401/403:
    those say the key is missing or wrong, which every real request would meet too."""
    import requests

    from harness.util.redaction import remember

    headers = {}
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            return f"judge: environment variable {api_key_env} is not set; export {api_key_env}=<key>"
        remember(key)
        headers["Authorization"] = f"Bearer {key}"
    url = f"{base_url.rstrip('/')}/chat/completions"
    body = {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1, "temperature": 0}
    try:
        response = requests.post(url, json=body, headers=headers, timeout=timeout_s)
    except requests.RequestException as exc:
        return (f"judge: {url} did not answer a 1-token test request ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); check judge.base_url and the network")
    if response.status_code in (401, 403):
        hint = (f"check the key in {api_key_env}" if api_key_env
                else "set judge.api_key_env to the variable holding the key")
        return f"judge: {url} refused the test request (HTTP {response.status_code}: {response.text[:200]}); {hint}"
    if response.status_code >= 500:
        return (f"judge: {url} answered the test request with HTTP {response.status_code} "
                f"({response.text[:200]}); the judge server is failing")
    return None


def judge_problems(cfg: SweepConfig, grid: Grid, store: Store, force: Collection[str] = ()) -> list[str]:
    """The judge, when a judged evaluation is still to do: a remote one answers one tiny request; a local one
    (`serve:`) starts and answers."""
    if cfg.judge is None or not judged_evaluations_to_do(cfg, grid, store, force):
        return []
    judge = cfg.judge
    if judge.serve:
        from harness.tasks.rubric_judge import LOCAL_JUDGES, MODEL_NAME, RubricJudge

        try:
            with RubricJudge(reply=LOCAL_JUDGES[judge.serve]) as local:
                problem = ping_judge(local.base_url, MODEL_NAME, None, timeout_s=10)
        except OSError as exc:
            return [f"judge: the local {judge.serve} judge could not start: {exc}"]
        return [problem] if problem else []
    problem = ping_judge(judge.base_url, judge.model, judge.api_key_env)
    return [problem] if problem else []


def calibration_data_problems(cfg: SweepConfig, grid: Grid, store: Store, jobs, force: Collection[str] = ()
                              ) -> list[str]:
    """Local calibration data too short to fill its rows, for each model whose calibration is still to do.

    This check loads the tokenizer and tokenizes the data (seconds, and the tokenizer stack's import), so it
    runs here, on the job graph, rather than in validation: a resumed sweep whose calibration is stored, and a
    dry run of it, skip it."""
    from harness.sweep.config import _calibration_data_problems

    waiting = {job.model for job in jobs if job.stage == "calibration"}
    problems = []
    for i, mj in enumerate(grid.models):
        if mj.model.name not in waiting or (store.is_done("calibration", mj.calibration_key)
                                            and "calibration" not in force):
            continue
        problems += [f"models[{i}] ({mj.model.name}): calibration: {p}"
                     for p in _calibration_data_problems(cfg, mj.source)]
    return problems


# -- serving and calibration on GPUs -----------------------------------------------------------------------
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default --gpu-memory-utilization


def gpu_memory() -> list[int]:
    """Total bytes of each visible GPU (empty without one). Asks nvidia-smi, not torch, so a dry run stays
    light; honours CUDA_VISIBLE_DEVICES given as indices. Tests replace it (monkeypatch)."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    sizes = [int(float(x)) * 2**20 for x in out.split() if x.strip()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        picked = [int(x) for x in visible.split(",") if x.strip().isdigit()]
        sizes = [sizes[i] for i in picked if i < len(sizes)]
    return sizes


def memory_fraction(extra_args: list[str]) -> float:
    """The serving memory fraction: `--gpu-memory-utilization X` in serving.extra_args, else vLLM's default."""
    for i, arg in enumerate(extra_args):
        if arg.startswith("--gpu-memory-utilization"):
            value = arg.split("=", 1)[1] if "=" in arg else (extra_args[i + 1] if i + 1 < len(extra_args) else "")
            try:
                return float(value)
            except ValueError:
                break
    return DEFAULT_GPU_MEMORY_UTILIZATION


def tensor_parallel_problem(config: dict, tp: int, extra_args: list[str]) -> str | None:
    """Why vLLM cannot split this model over `tp` GPUs, or None: attention heads, key/value heads and the
    MLP and expert widths must divide evenly, and a block-quantised (FP8) or group-quantised (int4) slice must
    keep whole blocks or groups (expert parallelism, `--enable-expert-parallel`, keeps experts whole)."""
    from harness.checkpoint.quantisation import quantization_config

    if tp == 1:
        return None
    c = config.get("text_config") or config
    heads, kv = c.get("num_attention_heads", 1), c.get("num_key_value_heads")
    if heads % tp:
        return f"{heads} attention heads do not split over {tp} GPUs"
    if kv and c.get("model_type") != "deepseek_v3" and (kv % tp if kv >= tp else tp % kv):
        return f"{kv} key/value heads do not split over {tp} GPUs"
    qc = quantization_config(config)
    block = (qc.get("weight_block_size") or [None, None])[0] if qc.get("quant_method") == "fp8" else None
    groups = list((qc.get("config_groups") or {}).values())
    group = ((groups[0].get("weights") or {}).get("group_size") if groups else None)
    expert_parallel = any(a.startswith("--enable-expert-parallel") for a in extra_args)
    widths = {"intermediate_size": c.get("intermediate_size_mlp") or c.get("intermediate_size")}
    if not expert_parallel:
        widths["moe_intermediate_size"] = c.get("moe_intermediate_size") or (
            c.get("intermediate_size") if c.get("model_type") in ("mixtral", "llama4_text") else None)
    for name, width in widths.items():
        if not width:
            continue
        if width % tp:
            return f"{name} {width} does not split over {tp} GPUs"
        part = width // tp
        if block and part % block:
            hint = "; add --enable-expert-parallel to serving.extra_args" if name == "moe_intermediate_size" else ""
            return (f"{name} {width} / {tp} GPUs = {part} is not a multiple of the FP8 weight block {block}"
                    f"{hint}")
        if group and name == "moe_intermediate_size" and part % group:
            return (f"{name} {width} / {tp} GPUs = {part} is not a multiple of the int4 group size {group}; add "
                    f"--enable-expert-parallel to serving.extra_args")
    return None


def allowed_tensor_parallel(config: dict, extra_args: list[str], most: int = 64) -> list[int]:
    return [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= most and tensor_parallel_problem(config, n, extra_args) is None]


def serving_problems(cfg: SweepConfig, grid: Grid, store: Store, estimate, force: Collection[str] = ()
                     ) -> list[str]:
    """Tensor parallelism the model's shapes allow; with GPUs visible, the weights per GPU at the serving
    memory fraction, and normal-mode calibration that fits (else: sequential_calibration). Only for models
    with evaluations (serving) or a calibration still to do."""
    from harness.sweep.costs import human

    gpus = gpu_memory()
    problems = []
    for mj, cost in zip(grid.models, estimate.models, strict=True):
        serving = mj.model.serving
        tp = serving.tensor_parallel_size
        where = f"models ({mj.model.name})"
        evals_to_do = "eval" in force or any(not store.is_done("eval", k) for v in mj.variants
                                             for k in v.eval_keys.values())
        calibration_to_do = any(v.method for v in mj.variants) and (
            "calibration" in force or not store.is_done("calibration", mj.calibration_key)) and any(
            not store.is_available("checkpoint", v.checkpoint_key) for v in mj.variants if v.method)
        if evals_to_do:
            why = tensor_parallel_problem(cost.shape.config, tp, serving.extra_args)
            if why:
                allowed = allowed_tensor_parallel(cost.shape.config, serving.extra_args)
                problems.append(f"{where}: serving.tensor_parallel_size {tp}: {why}; sizes this model allows: "
                                f"{', '.join(map(str, allowed))}")
        if not gpus:
            continue
        if evals_to_do:
            if tp > len(gpus):
                problems.append(f"{where}: serving.tensor_parallel_size {tp} but {len(gpus)} GPU(s) are visible")
            fraction = memory_fraction(serving.extra_args)
            budget = int(min(gpus[:tp] or gpus) * fraction)
            for what, per_gpu in cost.serving_per_gpu().items():
                if per_gpu > budget:
                    need = next((n for n in allowed_tensor_parallel(cost.shape.config, serving.extra_args)
                                 if -(-per_gpu * tp // n) <= budget), None)
                    hint = (f"serve on {need} GPUs (tensor_parallel_size: {need})" if need else
                            "no tensor parallel size up to 64 fits")
                    problems.append(f"{where}: the {what}'s weights take {human(per_gpu)} per GPU at "
                                    f"tensor_parallel_size {tp}, more than {human(budget)} ({fraction:g} of "
                                    f"{human(min(gpus))}, the serving memory fraction); {hint}")
        if calibration_to_do:
            total = sum(gpus)
            normal, sequential = cost.calibration["normal"], cost.calibration["sequential"]
            if not cfg.sequential_calibration and normal.gpu_total > total:
                # the hidden states move to host memory when they would crowd the GPU
                fits = sequential.gpu_total - sequential.hidden_states <= max(gpus)
                problems.append(f"{where}: calibration in normal mode needs about {human(normal.gpu_total)} of GPU "
                                f"memory, the {len(gpus)} visible GPU(s) have {human(total)}; "
                                + ("set `sequential_calibration: true` (about "
                                   f"{human(sequential.gpu_total)} on one GPU)" if fits else
                                   f"even sequential mode needs about {human(sequential.gpu_total)} on one GPU: "
                                   "lower calibration_batch_size or samples x length"))
            elif cfg.sequential_calibration and sequential.gpu_total - sequential.hidden_states > max(gpus):
                problems.append(f"{where}: sequential calibration needs about {human(sequential.gpu_total)} on one "
                                f"GPU, the largest has {human(max(gpus))}; lower calibration_batch_size")
    return problems
