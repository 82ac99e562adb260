"""Requests to an OpenAI-compatible server, many at once, in input order.

vLLM batches concurrent requests itself, so a thread pool of `concurrency` requests
is all the client needs to keep the server full.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests

from harness.tasks.base import Endpoint, GenerationSettings, TaskError

RETRIES = 3
TIMEOUT_S = 600


@dataclass
class Completion:
    text: str
    finish_reason: str | None
    completion_tokens: int


def _post(endpoint: Endpoint, route: str, body: dict[str, Any]) -> dict[str, Any]:
    url = f"{endpoint.base_url.rstrip('/')}/{route}"
    headers = {"Authorization": f"Bearer {endpoint.api_key()}"}
    last: Exception | None = None
    for attempt in range(RETRIES):
        try:
            response = requests.post(url, json=body, headers=headers, timeout=TIMEOUT_S)
        except requests.ConnectionError as exc:  # server restarting or overloaded: retry
            last = exc
            time.sleep(1 + attempt)
            continue
        if response.status_code >= 500:
            last = TaskError(f"{url}: HTTP {response.status_code}: {response.text[:500]}")
            time.sleep(1 + attempt)
            continue
        if response.status_code >= 400:  # our request is wrong: retrying will not help
            raise TaskError(f"{url}: HTTP {response.status_code}: {response.text[:500]}")
        return response.json()
    raise TaskError(f"{url}: no answer after {RETRIES} tries: {last}")


def _map(fn, items: Sequence[Any], concurrency: int, desc: str | None) -> list[Any]:
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(tqdm(pool.map(fn, items), total=len(items), desc=desc, disable=desc is None, leave=False))


def chat_many(endpoint: Endpoint, conversations: Sequence[list[dict[str, str]]], settings: GenerationSettings,
              *, desc: str | None = None) -> list[Completion]:
    """One /chat/completions request per conversation, with the server's chat template."""

    def one(messages: list[dict[str, str]]) -> Completion:
        body = {"model": endpoint.model, "messages": messages, **settings.request_fields()}
        if settings.chat_template_kwargs:
            body["chat_template_kwargs"] = settings.chat_template_kwargs
        reply = _post(endpoint, "chat/completions", body)
        choice = reply["choices"][0]
        return Completion(choice["message"].get("content") or "", choice.get("finish_reason"),
                          int(reply.get("usage", {}).get("completion_tokens", 0)))

    return _map(one, conversations, settings.concurrency, desc)
