"""Fixtures for end-to-end tests: a real relay on loopback, real QUIC clients."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from nacl.signing import SigningKey

from client.connection import RelayClient, connect_relay
from crypto.device_list import decode_device_list
from crypto.primitives import Ed25519KeyPair, SystemRandom, ed25519_generate
from enrolment import admin
from enrolment.sms import SmsMessage
from relay.server import RunningRelay, serve
from relay.settings import RelaySettings
from storage.sqlite import open_sqlite_store


@dataclass
class SmsInbox:
    """Collects SMS sent by a relay under test; tests wait on it, never sleep."""

    messages: list[SmsMessage] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)

    def __call__(self, message: SmsMessage) -> None:
        self.messages.append(message)
        self.arrived.set()
        self.arrived = trio.Event()

    async def code_for(self, phone: str) -> str:
        with trio.fail_after(10):
            while True:
                for message in reversed(self.messages):
                    if message.to == phone:
                        match = re.search(r"\b(\d{6})\b", message.body)
                        assert match, message.body
                        return match.group(1)
                await self.arrived.wait()


@dataclass
class RelayUnderTest:
    """A relay running in the test's trio loop, and helpers to drive it."""

    data_dir: Path
    running: RunningRelay
    sms: SmsInbox

    @property
    def port(self) -> int:
        return self.running.address[1]

    def connect(self) -> AbstractAsyncContextManager[RelayClient]:
        return connect_relay("127.0.0.1", self.port, ca=self.running.cert_path,
                             server_name="localhost")


@dataclass
class EnrolledDevice:
    phone: str
    user_id: str
    device_id: int
    key: SigningKey
    account: Ed25519KeyPair
    """The account key pair (every device of one account holds the same)."""

    @property
    def identity_key(self) -> bytes:
        return self.key.verify_key.encode()


def new_account() -> Ed25519KeyPair:
    """A fresh account key pair, as a device makes one when it enrols by SMS."""
    return ed25519_generate(SystemRandom())


async def declare(data_dir: Path, organisation: str, *phones: str, seats: int = 10) -> None:
    """Create the organisation (if needed) and declare the phones, as an operator would."""
    async with open_sqlite_store(data_dir / "relay.db") as store:
        if await store.get_organisation(organisation) is None:
            await admin.create_organisation(store, organisation, seats, 0)
        for phone in phones:
            await admin.declare_user(store, organisation, phone, 0)


async def enrol(relay: RelayUnderTest, phone: str) -> EnrolledDevice:
    """Enrol ``phone`` by SMS: a new account with one device (the number's earlier devices, if
    any, are revoked). Waits for the code sent now, not one an earlier enrolment received."""
    key, account = SigningKey.generate(), new_account()
    already = len(relay.sms.messages)
    async with relay.connect() as client:
        await client.enrol_start(phone)
        with trio.fail_after(10):
            while len(relay.sms.messages) == already:
                await relay.sms.arrived.wait()
        code = await relay.sms.code_for(phone)
        enrolled = await client.enrol_verify(phone, code, key.verify_key.encode(), account)
    return EnrolledDevice(phone=phone, user_id=enrolled.user_id, device_id=enrolled.device_id,
                          key=key, account=account)


async def link_device(relay: RelayUnderTest, approver: EnrolledDevice) -> EnrolledDevice:
    """Add a device to ``approver``'s account as an approving device does: sign the next
    device list (the current keys and a new one) with the account key and publish it."""
    key = SigningKey.generate()
    async with relay.connect() as client:
        await client.authenticate(approver.user_id, approver.device_id, approver.key)
        current = await client.list_devices()
        assert current.signed_list is not None
        listed = decode_device_list(current.signed_list, account_key=approver.account.public_key)
        published = await client.publish_device_list(listed.with_devices(
            approver.account, listed.devices | {key.verify_key.encode()}).encoded)
    [added] = published.added
    return EnrolledDevice(phone=approver.phone, user_id=approver.user_id,
                          device_id=added.device_id, key=key, account=approver.account)


@pytest.fixture
def relay_settings(tmp_path: Path) -> RelaySettings:
    return RelaySettings(data_dir=tmp_path / "relay", listen_port=0)


@pytest.fixture
async def relay(relay_settings: RelaySettings,
                nursery: trio.Nursery) -> AsyncIterator[RelayUnderTest]:
    relay_settings.data_dir.mkdir(parents=True, exist_ok=True)
    await declare(relay_settings.data_dir, "acme", "+33612345678", "+33698765432",
                  "+33611111111")
    sms = SmsInbox()
    running: RunningRelay = await nursery.start(
        lambda task_status: serve(relay_settings, task_status=task_status, on_sms_sent=sms))
    yield RelayUnderTest(data_dir=relay_settings.data_dir, running=running, sms=sms)
    running.stop()
