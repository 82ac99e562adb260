"""Secrets are recognised by name or by having been used as a key, and never survive `redact`."""

from __future__ import annotations

import logging

from harness.redaction import REDACTED, RedactingFormatter, is_secret_name, redact, remember, secret_values


def test_secret_names():
    for name in ("HF_TOKEN", "OPENAI_API_KEY", "judge_key", "AWS_SECRET", "DB_PASSWORD", "TOKEN"):
        assert is_secret_name(name), name
    for name in ("PATH", "KEYBOARD", "TOKENIZERS_PARALLELISM", "HOME", "MONKEY"):
        assert not is_secret_name(name), name


def test_values_from_the_environment_and_remembered_keys(monkeypatch):
    monkeypatch.setenv("HARNESS_TEST_TOKEN", "tok-1234567890")
    monkeypatch.setenv("HARNESS_TEST_KEY", "short")  # too short to be a key, too likely to occur by chance
    remember("judge-credential-abcdef")
    known = secret_values()
    assert {"tok-1234567890", "judge-credential-abcdef"} <= known and "short" not in known


def test_redact_nested_values_and_log_records(monkeypatch):
    monkeypatch.setenv("HARNESS_TEST_TOKEN", "tok-1234567890")
    monkeypatch.setenv("HARNESS_TEST_LONGER_TOKEN", "tok-1234567890-and-more")
    data = {"a": ["x tok-1234567890 y", ("tok-1234567890-and-more",)], "tok-1234567890": 3, "n": 1.5}
    assert redact(data) == {"a": [f"x {REDACTED} y", (REDACTED,)], REDACTED: 3, "n": 1.5}
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "key %s", ("tok-1234567890",), None)
    assert RedactingFormatter("%(message)s").format(record) == f"key {REDACTED}"
