"""The ``outbox`` push provider: wake-ups as JSON lines in ``DATA_DIR/push-outbox.jsonl``.

For development and the README walkthrough, as the SMS outbox (``enrolment.sms.OutboxGateway``)
is for codes: each wake-up is one line ``{"provider": "outbox", "token": ..., "urgent": ...,
"at": ...}``, written with one ``write`` on a file opened with ``O_APPEND`` (concurrent sends
never interleave inside a line), mode 0600.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import trio

from enrolment.sms import utc_timestamp
from relay.push_providers import PushOutcome, PushResult, PushTarget

__all__ = ["MAX_OUTBOX_TOKEN_CHARS", "OUTBOX_FILE_MODE", "OUTBOX_FILE_NAME", "OutboxProvider"]

OUTBOX_FILE_NAME = "push-outbox.jsonl"
OUTBOX_FILE_MODE = 0o600
"""The outbox says which device was woken when: only the relay's user may read it."""
MAX_OUTBOX_TOKEN_CHARS = 128
"""An outbox token is a client's random id (``cryptopass push set``: 32 characters)."""
_OUTBOX_TOKEN = re.compile(r"[A-Za-z0-9_\-]+")


class OutboxProvider:
    """Appends each wake-up to a JSON-lines file; never contacts anything."""

    def __init__(self, path: Path, *, now: Callable[[], float] = time.time) -> None:
        self.path = path
        self._now = now

    @property
    def name(self) -> str:
        return "outbox"

    def check_target(self, target: PushTarget) -> str | None:
        if len(target.token) > MAX_OUTBOX_TOKEN_CHARS or not _OUTBOX_TOKEN.fullmatch(
                target.token):
            return (f"an outbox token is up to {MAX_OUTBOX_TOKEN_CHARS} letters, digits, "
                    "- or _")
        if target.p256dh is not None or target.auth is not None:
            return "an outbox target carries no Web Push keys"
        return None

    async def send(self, target: PushTarget, *, urgent: bool) -> PushOutcome:
        line = {"provider": "outbox", "token": target.token, "urgent": urgent,
                "at": utc_timestamp(int(self._now() * 1000))}
        data = (json.dumps(line) + "\n").encode()
        try:
            await trio.to_thread.run_sync(self._append, data)
        except OSError as error:
            return PushOutcome(result=PushResult.RETRY,
                               detail=f"outbox {error.strerror or 'write failed'}")
        return PushOutcome(result=PushResult.SENT, detail="outbox")

    def _append(self, data: bytes) -> None:
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                             | os.O_NOFOLLOW, OUTBOX_FILE_MODE)
        try:
            os.fchmod(descriptor, OUTBOX_FILE_MODE)  # the mode of a file made before
            written = 0
            while written < len(data):
                written += os.write(descriptor, data[written:])
        finally:
            os.close(descriptor)

    async def aclose(self) -> None:
        """Nothing to release; here so every provider closes alike."""
