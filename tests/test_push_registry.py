"""PUSH_SET, PUSH_CLEAR and PUSH_GET answered by the registry on a real SQLite file: the
budget, what each refusal stores (nothing), and what the scheduler is told."""

from __future__ import annotations

import pathlib

import trio

from relay.metrics import RelayMetrics
from relay.push_registry import PUSH_SET_RETRY_AFTER_MS, PUSH_SETS_PER_HOUR, PushRegistry
from storage.sqlite import open_sqlite_store
from tests.push_support import RecordingProvider
from tests.storage_conformance import NOW, _enrolled
from wire.catalogue import ErrorCode
from wire.codec import decode_body
from wire.frames import LENGTH_PREFIX_SIZE, Error, Frame
from wire.push_frames import (
    PushClear,
    PushCleared,
    PushGet,
    PushSet,
    PushTargetSet,
    RegisteredPushTarget,
)


class Changes:
    def __init__(self) -> None:
        self.targets: set[tuple[str, int]] = set()

    def target_set(self, device: tuple[str, int]) -> None:
        self.targets.add(device)

    def target_cleared(self, device: tuple[str, int]) -> None:
        self.targets.discard(device)


def _decoded(answer: bytes) -> Frame:
    return decode_body(answer[LENGTH_PREFIX_SIZE:])


async def test_registrations_are_budgeted_and_refusals_store_nothing(
        tmp_path: pathlib.Path) -> None:
    async with open_sqlite_store(tmp_path / "relay.db", synchronous="NORMAL") as store:
        user, [device_id] = await _enrolled(store)
        device = (user.user_id, device_id)
        changes, metrics = Changes(), RelayMetrics()
        registry = PushRegistry(store=store, providers={"outbox": RecordingProvider()},
                                changes=changes, metrics=metrics, now_ms=lambda: NOW)
        with trio.fail_after(30):
            refused = _decoded(await registry.handle(device, PushSet(
                provider="outbox", token="refused-token")))
            assert isinstance(refused, Error) and refused.code is ErrorCode.INVALID_PUSH_TARGET
            unavailable = _decoded(await registry.handle(device, PushSet(
                provider="fcm", token="fcm-token")))
            assert isinstance(unavailable, Error)
            assert unavailable.code is ErrorCode.PUSH_PROVIDER_UNAVAILABLE
            assert _decoded(await registry.handle(device, PushGet())) == RegisteredPushTarget()
            assert changes.targets == set()
            for index in range(PUSH_SETS_PER_HOUR - 2):
                assert isinstance(_decoded(await registry.handle(device, PushSet(
                    provider="outbox", token=f"token-{index}"))), PushTargetSet)
            assert changes.targets == {device}
            over = _decoded(await registry.handle(device, PushSet(provider="outbox",
                                                                  token="one-too-many")))
            assert isinstance(over, Error) and over.code is ErrorCode.RATE_LIMITED
            assert over.retry_after_ms == PUSH_SET_RETRY_AFTER_MS
            last = f"token-{PUSH_SETS_PER_HOUR - 3}"
            assert _decoded(await registry.handle(device, PushGet())) == RegisteredPushTarget(
                provider="outbox", token=last)
            assert isinstance(_decoded(await registry.handle(device, PushClear())),
                              PushCleared)
            assert changes.targets == set()
            assert await store.get_push_target(user_id=user.user_id,
                                               device_id=device_id) is None
        assert metrics.push_targets["set", "outbox"] == PUSH_SETS_PER_HOUR - 2
        assert metrics.push_targets["rate_limited", "outbox"] == 1
        assert metrics.push_targets["invalid_target", "outbox"] == 1
        assert metrics.push_targets["provider_unavailable", "fcm"] == 1
