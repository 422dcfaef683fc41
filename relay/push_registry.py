"""PUSH_SET, PUSH_CLEAR and PUSH_GET: a device registers, removes or reads its push target.

A target is refused, and nothing stored, when this relay does not serve its provider
(PUSH_PROVIDER_UNAVAILABLE) or the provider refuses it (INVALID_PUSH_TARGET, e.g. a Web Push
endpoint whose host is not allowed: a client must not make the relay send requests where it
likes). Registrations count against a per-device hourly budget kept in the store (each is a
write, and a provider check). Logs name the provider, never the token or endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, assert_never

import structlog

from relay.metrics import RelayMetrics
from relay.push_providers import PushProvider, PushTarget
from storage.interfaces.push import PushTargetStore
from storage.interfaces.rate_limits import RateLimits
from storage.push_records import StoredPushTarget
from wire.catalogue import ErrorCode
from wire.codec import encode_frame
from wire.frames import MAX_REASON_LENGTH, Error
from wire.push_frames import (
    PushClear,
    PushCleared,
    PushGet,
    PushRequest,
    PushSet,
    PushTargetSet,
    RegisteredPushTarget,
)

__all__ = ["PUSH_SETS_PER_HOUR", "PUSH_SET_PERIOD_MS", "PUSH_SET_RETRY_AFTER_MS", "PushRegistry",
           "PushRegistryStore", "TargetChanges"]

log = structlog.get_logger("relay.push_registry")

PUSH_SETS_PER_HOUR = 20
"""PUSH_SETs one device may make in an hour (refused ones included): an app registers again
when its platform rotates the token, a few times a day at most."""

PUSH_SET_PERIOD_MS = 60 * 60 * 1000
"""The period over which PUSH_SETS_PER_HOUR refill (one hour)."""


class PushRegistryStore(PushTargetStore, RateLimits, Protocol):
    """What the registry needs of the store: the targets, and its rate limit."""


class TargetChanges(Protocol):
    """Who hears of a target set or cleared here (the scheduler keeps which devices have one)."""

    def target_set(self, device: tuple[str, int]) -> None: ...

    def target_cleared(self, device: tuple[str, int]) -> None: ...


PUSH_SET_RETRY_AFTER_MS = PUSH_SET_PERIOD_MS // PUSH_SETS_PER_HOUR
"""When a device over its budget may try again: one registration comes back this often."""


def _error(code: ErrorCode, reason: str, retry_after_ms: int | None = None) -> bytes:
    return encode_frame(Error(code=code, reason=reason[:MAX_REASON_LENGTH],
                              retry_after_ms=retry_after_ms))


class PushRegistry:
    """Answers the push target requests of authenticated devices; one per relay."""

    def __init__(self, *, store: PushRegistryStore, providers: Mapping[str, PushProvider],
                 changes: TargetChanges, metrics: RelayMetrics,
                 now_ms: Callable[[], int]) -> None:
        self._store = store
        self._providers = dict(providers)
        self._changes = changes
        self._metrics = metrics
        self._now_ms = now_ms

    async def handle(self, device: tuple[str, int], frame: PushRequest) -> bytes:
        """Answer one request of ``device`` with an encoded frame."""
        user_id, device_id = device
        match frame:
            case PushSet():
                return await self._set(device, frame)
            case PushClear():
                await self._store.clear_push_target(user_id=user_id, device_id=device_id)
                self._changes.target_cleared(device)
                self._count("cleared")
                return encode_frame(PushCleared())
            case PushGet():
                target = await self._store.get_push_target(user_id=user_id, device_id=device_id)
                if target is None:
                    return encode_frame(RegisteredPushTarget())
                return encode_frame(RegisteredPushTarget(provider=target.provider,
                                                         token=target.token))
            case _:
                assert_never(frame)

    async def _set(self, device: tuple[str, int], frame: PushSet) -> bytes:
        user_id, device_id = device
        if not await self._store.take_tokens(
                key=f"push set {user_id} {device_id}", cost=1, capacity=PUSH_SETS_PER_HOUR,
                period_ms=PUSH_SET_PERIOD_MS, now=self._now_ms()):
            return self._refuse("rate_limited", frame.provider, ErrorCode.RATE_LIMITED,
                                f"at most {PUSH_SETS_PER_HOUR} push targets an hour; retry "
                                "later", retry_after_ms=PUSH_SET_RETRY_AFTER_MS)
        provider = self._providers.get(frame.provider)
        if provider is None:
            return self._refuse("provider_unavailable", frame.provider,
                                ErrorCode.PUSH_PROVIDER_UNAVAILABLE,
                                f"this relay does not offer the {frame.provider} push provider "
                                f"(it offers: {', '.join(sorted(self._providers)) or 'none'})")
        target = PushTarget(provider=frame.provider, token=frame.token, p256dh=frame.p256dh,
                            auth=frame.auth)
        refusal = provider.check_target(target)
        if refusal is not None:
            return self._refuse("invalid_target", frame.provider, ErrorCode.INVALID_PUSH_TARGET,
                                refusal)
        stored = await self._store.set_push_target(
            user_id=user_id, device_id=device_id, now=self._now_ms(),
            target=StoredPushTarget(provider=frame.provider, token=frame.token,
                                    p256dh=frame.p256dh, auth=frame.auth))
        if not stored:  # deleted since it authenticated: its connection is being closed
            return self._refuse("device_gone", frame.provider, ErrorCode.DEVICE_REVOKED,
                                "this device was revoked")
        self._changes.target_set(device)
        self._count("set", frame.provider)
        log.info("push_target_set", provider=frame.provider)
        return encode_frame(PushTargetSet())

    def _refuse(self, outcome: str, provider: str, code: ErrorCode, reason: str, *,
                retry_after_ms: int | None = None) -> bytes:
        self._count(outcome, provider)
        log.info("push_target_refused", outcome=outcome, provider=provider)
        return _error(code, reason, retry_after_ms)

    def _count(self, outcome: str, provider: str = "") -> None:
        self._metrics.push_targets[outcome, provider] += 1
