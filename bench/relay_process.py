"""Following a ``cryptopass-relay serve`` subprocess through its JSON log.

Used by the benchmarks and by the tests that run the real CLIs: waiting for
a log event (``relay_listening``, ``sms_sent``, ``device_authenticated``) is how
they know the relay did something, without sleeping.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import trio

__all__ = ["DEFAULT_WAIT_SECONDS", "RelayProcess"]

DEFAULT_WAIT_SECONDS = 30.0
"""How long ``wait_for`` waits for an event before failing."""


@dataclass(kw_only=True)
class RelayProcess:
    """A relay subprocess whose standard error (JSON lines) is parsed as it arrives."""

    process: trio.Process
    events: list[dict[str, Any]] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    async def follow_log(self) -> None:
        """Parse the relay's JSON log lines (and keep its stderr pipe drained)."""
        assert self.process.stderr is not None
        buffer = b""
        async for chunk in self.process.stderr:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    self.events.append(event)
            self._wake()
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, event: str, count: int = 1) -> dict[str, Any]:
        """The ``count``-th log event named ``event``, once it is logged.

        Raises:
            RuntimeError: the relay exited first.
            trio.TooSlowError: not logged within DEFAULT_WAIT_SECONDS.
        """
        with trio.fail_after(DEFAULT_WAIT_SECONDS):
            while True:
                matching = [e for e in self.events if e.get("event") == event]
                if len(matching) >= count:
                    return matching[count - 1]
                if self.process.returncode is not None:
                    raise RuntimeError(f"relay exited ({self.process.returncode}) "
                                       f"before {event!r}")
                await self.changed.wait()
