"""A real push provider for the relay's wake-up tests: it records each send and answers what
the test queued (SENT by default). It stands for the providers of ``relay/push_*.py``, which
have their own tests against real push services."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import trio

from relay.push_providers import PushOutcome, PushResult, PushTarget

__all__ = ["RecordedPush", "RecordingProvider"]


@dataclass(frozen=True)
class RecordedPush:
    target: PushTarget
    urgent: bool
    at: float
    """trio.current_time() when it was sent."""


@dataclass
class RecordingProvider:
    """Records pushes in ``sent`` and on a memory channel; answers from ``answers``."""

    provider_name: str = "outbox"
    answers: deque[PushOutcome | BaseException] = field(default_factory=deque)
    sent: list[RecordedPush] = field(default_factory=list)
    refuse_tokens: frozenset[str] = frozenset({"refused-token"})

    def __post_init__(self) -> None:
        self._send_channel, self.pushes = trio.open_memory_channel[RecordedPush](1000)

    @property
    def name(self) -> str:
        return self.provider_name

    def check_target(self, target: PushTarget) -> str | None:
        if target.token in self.refuse_tokens:
            return "this test refuses that token"
        return None

    async def send(self, target: PushTarget, *, urgent: bool) -> PushOutcome:
        recorded = RecordedPush(target=target, urgent=urgent, at=trio.current_time())
        self.sent.append(recorded)
        self._send_channel.send_nowait(recorded)
        answer = self.answers.popleft() if self.answers else PushOutcome(result=PushResult.SENT)
        if isinstance(answer, BaseException):
            raise answer
        return answer
