"""Errors meant for the user: the CLI prints their message, without a traceback, and exits non-zero."""

from __future__ import annotations


class WinnowError(RuntimeError):
    """A problem the user can act on; its message says what happened and what to run next."""


class DamagedShards(WinnowError):
    """Input shards whose files no longer match the checksums recorded when they were written."""
