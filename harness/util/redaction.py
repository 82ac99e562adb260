"""Secrets (API keys, tokens) stay out of everything the harness writes.

A secret is the value of an environment variable whose name says it is one (`*_TOKEN`,
`*_KEY`, `*_SECRET`, `*_PASSWORD`, case-insensitive) or any value the harness sent as an
API key (`remember`, called by `Endpoint.api_key`). Values shorter than
`MIN_SECRET_CHARS` are ignored (too likely to occur by chance, too short to be a key).

`redact` replaces them, in a string or inside nested lists/dicts, with `REDACTED`; the
sweep runs its logs, stored records and result tables through it, and the sandbox
refuses to pass such variables into generated code's environment.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from typing import Any

MIN_SECRET_CHARS = 8
REDACTED = "[redacted]"
_SECRET_NAME = re.compile(r"(^|_)(TOKEN|KEY|SECRET|PASSWORD)$", re.IGNORECASE)
_remembered: set[str] = set()
_lock = threading.Lock()


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name marks its value as a secret (HF_TOKEN, OPENAI_API_KEY, ...)."""
    return _SECRET_NAME.search(name) is not None


def remember(value: str) -> None:
    """Treat `value` as a secret from now on (e.g. an API key read from a variable of any name)."""
    if value and len(value) >= MIN_SECRET_CHARS:
        with _lock:
            _remembered.add(value)


def secret_values() -> set[str]:
    """Every secret this process knows of now (longest first matters only to `redact`)."""
    found = {value for name, value in os.environ.items() if is_secret_name(name) and len(value) >= MIN_SECRET_CHARS}
    with _lock:
        return found | _remembered


def redact(value: Any, secrets: set[str] | None = None) -> Any:
    """`value` with every secret replaced by REDACTED (strings, and strings inside lists, tuples and dicts).

    A string may be JSON text: a secret is also found in its escaped form there, and the
    text stays valid JSON.
    """
    known = secret_values() if secrets is None else secrets
    if not known:
        return value
    # each secret as it is and as it appears inside a JSON string; a secret containing another is replaced whole
    forms = {form for secret in known
             for form in (secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1])}
    ordered = sorted(forms, key=len, reverse=True)

    def scrub(item: Any) -> Any:
        if isinstance(item, str):
            for secret in ordered:
                if secret in item:
                    item = item.replace(secret, REDACTED)
            return item
        if isinstance(item, dict):
            return {scrub(k): scrub(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return type(item)(scrub(v) for v in item)
        return item

    return scrub(value)


class RedactingFormatter(logging.Formatter):
    """A log formatter whose output (message, arguments and traceback alike) never holds a secret."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
