"""Checks that run after validation and before any heavy work, on what the sweep still has to do.

Validation (harness.config) checks the file; these check the world the sweep will meet: the judge
answers, the checkpoints fit the disk, the model fits the GPUs at the chosen tensor parallelism.
Each returns problems as sentences that say what to change; the sweep stops before calibration when
there are any (a checkpoint that does not fit fails its own job instead: `disk_problem`).
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from harness.config import SweepConfig
from harness.grid import Grid
from harness.store import Store

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

    from harness.redaction import remember

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
