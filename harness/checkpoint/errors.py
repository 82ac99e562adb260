"""The checkpoint package's error."""

from __future__ import annotations


class CheckpointError(ValueError):
    """The plan cannot be applied to this checkpoint, or the checkpoint is broken; the message says why."""
