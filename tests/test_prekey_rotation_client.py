"""A device that stays connected for weeks still rotates its signed and last-resort prekeys:
the messenger looks hourly whether they are due and publishes the new ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

import client.messenger as messenger_module
from client.connection import RelayClient
from client.messenger import Messenger
from client.profile import Profile
from crypto.device import DeviceAddress, DeviceCrypto
from crypto.device_list import sign_device_list
from crypto.primitives import SystemRandom, ed25519_keypair_from_private
from wire.prekey_frames import DeviceInfo, DeviceList, PrekeyCounts

DAY_S = 24 * 3600


class _Relay:
    """The relay as the messenger sees it: it holds what was last uploaded."""

    def __init__(self, identity_key: bytes, account_seed: bytes) -> None:
        account = ed25519_keypair_from_private(account_seed)
        self.listed = DeviceList(
            user_id="u1", devices=(DeviceInfo(device_id=1, registered_at=0,
                                              identity_key=identity_key),),
            account_key=account.public_key,
            signed_list=sign_device_list(account, version=1, devices=[identity_key]).encoded)
        self.signed_ids: list[int] = []
        self.counts = PrekeyCounts(one_time=0, kem_one_time=0)

    async def prekey_counts(self) -> PrekeyCounts:
        return self.counts

    async def upload_prekeys(self, **keys: Any) -> None:
        if keys["signed_prekey"] is not None:
            self.signed_ids.append(keys["signed_prekey"].key_id)
        self.counts = PrekeyCounts(
            one_time=100, kem_one_time=100,
            signed_prekey_id=(keys["signed_prekey"].key_id if keys["signed_prekey"]
                              else self.counts.signed_prekey_id),
            kem_last_resort_prekey_id=(keys["kem_last_resort_prekey"].key_id
                                       if keys["kem_last_resort_prekey"]
                                       else self.counts.kem_last_resort_prekey_id))

    async def list_devices(self, user_id: str | None = None) -> DeviceList:
        return self.listed

    async def next_prekeys_low(self) -> None:
        await trio.sleep_forever()

    # Sealed sender, which the messenger prepares on attaching: nothing to check here.
    async def get_sender_keys(self) -> tuple[()]:
        return ()

    async def set_delivery_token(self, token_hash: bytes | None, *, mode: str = "token") -> None:
        pass


async def test_a_long_connection_rotates_its_prekeys_when_due(
        tmp_path: Path, autojump_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(messenger_module, "_now_ms",
                        lambda: int(trio.current_time() * 1000))
    identity = ed25519_keypair_from_private(bytes(range(32)))
    profile = Profile(tmp_path)
    profile.data.relay, profile.data.phone = "127.0.0.1:1", "+33612345678"
    profile.data.user_id, profile.data.device_id = "u1", 1
    device = DeviceCrypto.create(identity, SystemRandom(), address=DeviceAddress("u1", 1),
                                 now_ms=int(trio.current_time() * 1000))
    relay = _Relay(identity.public_key, bytes([7]) * 32)
    async with Messenger.attach(cast(RelayClient, relay), profile, device, {},
                                persist_state=False):
        assert len(relay.signed_ids) == 1  # published at once
        await trio.sleep(6 * DAY_S)
        assert len(relay.signed_ids) == 1  # not due yet
        await trio.sleep(2 * DAY_S)  # a week passed, plus at most the hourly check
        assert len(relay.signed_ids) == 2 and relay.signed_ids[1] != relay.signed_ids[0]
