"""Declaring and enrolling bench devices directly in a relay's store.

Enrolling hundreds of devices by SMS code through the relay measures
enrolment (the ``enrol`` scenario does that), not delivery. The other
scenarios provision their devices through the ``Store`` interface instead,
exactly as enrolment would leave them, while the relay runs (SQLite's WAL
lets the operator's process write beside it).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from nacl.signing import SigningKey

from crypto.device_list import sign_device_list
from crypto.primitives import ed25519_keypair_from_private
from enrolment import admin
from enrolment.service import FIRST_DEVICE_LIST_VERSION, REENROLMENT_REVOKE_REASON
from storage.base import Store

__all__ = ["BenchDevice", "bench_phone", "provision"]

CODE_TTL_MS = 60_000
"""Lifetime of the throw-away verification code each provisioned device consumes."""


@dataclass(frozen=True)
class BenchDevice:
    """Credentials of one device, serialisable for worker processes."""

    phone: str
    user_id: str
    device_id: int
    seed: bytes

    @property
    def key(self) -> SigningKey:
        return SigningKey(self.seed)

    def to_json(self) -> dict[str, object]:
        return {"phone": self.phone, "user_id": self.user_id, "device_id": self.device_id,
                "seed": self.seed.hex()}

    @classmethod
    def from_json(cls, value: dict[str, object]) -> BenchDevice:
        return cls(phone=str(value["phone"]), user_id=str(value["user_id"]),
                   device_id=int(str(value["device_id"])), seed=bytes.fromhex(str(value["seed"])))


def bench_phone(index: int) -> str:
    """A valid French mobile number for bench device ``index`` (up to 10 million)."""
    return f"+3361{index:07d}"


async def provision(store: Store, *, organisation: str, count: int, now: int,
                    first_index: int = 0) -> list[BenchDevice]:
    """Create ``organisation`` with ``count`` seats and one enrolled device per seat."""
    await admin.create_organisation(store, organisation, count, now)
    devices = []
    for index in range(first_index, first_index + count):
        phone = bench_phone(index)
        await admin.declare_user(store, organisation, phone, now)
        seed = secrets.token_bytes(32)
        phone_key, code_hash = secrets.token_bytes(32), secrets.token_bytes(32)
        recorded = await store.record_verification_code(
            phone_key=phone_key, code_hash=code_hash, now=now, expires_at=now + CODE_TTL_MS,
            window_ms=CODE_TTL_MS, max_sends=1)
        assert recorded
        identity_key = SigningKey(seed).verify_key.encode()
        device_list = sign_device_list(
            ed25519_keypair_from_private(secrets.token_bytes(32)),
            version=FIRST_DEVICE_LIST_VERSION, devices=(identity_key,))
        registration = await store.register_device(
            phone=phone, phone_key=phone_key, code_hash=code_hash, identity_key=identity_key,
            account_key=device_list.account_key, device_list=device_list.encoded,
            device_list_version=device_list.version, now=now, max_devices=1,
            revoke_reason=REENROLMENT_REVOKE_REASON)
        device = registration.device
        devices.append(BenchDevice(phone=phone, user_id=device.user_id,
                                   device_id=device.device_id, seed=seed))
    return devices
