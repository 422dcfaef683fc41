"""Devices for the crypto tests: fixed addresses and time, bundles as a relay would hand out.

No `assert` here (this module is not assert-rewritten, and the suite also runs under -O).
"""

from __future__ import annotations

from crypto.device import DeviceAddress, DeviceCrypto
from crypto.message_format import PREKEY_HEADER_SIZE
from crypto.prekeys import PrekeyBundle
from crypto.primitives import SeededRandom, ed25519_generate

NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
ALICE = DeviceAddress("alice", 1)
ALICE_PHONE_2 = DeviceAddress("alice", 2)
BOB = DeviceAddress("bob", 1)

# Offsets of the fields of a PREKEY message (crypto.message_format).
VERSION_OFFSET, TYPE_OFFSET = 0, 1
IDENTITY_KEY_OFFSET = 2
BASE_KEY_OFFSET = IDENTITY_KEY_OFFSET + 32
SIGNED_PREKEY_ID_OFFSET = BASE_KEY_OFFSET + 32
KEM_PREKEY_ID_OFFSET = SIGNED_PREKEY_ID_OFFSET + 4
HAS_ONE_TIME_OFFSET = KEM_PREKEY_ID_OFFSET + 4
ONE_TIME_ID_OFFSET = HAS_ONE_TIME_OFFSET + 1
KEM_CIPHERTEXT_OFFSET = ONE_TIME_ID_OFFSET + 4
RATCHET_KEY_OFFSET = 2 + PREKEY_HEADER_SIZE
PREVIOUS_CHAIN_LENGTH_OFFSET = RATCHET_KEY_OFFSET + 32
MESSAGE_NUMBER_OFFSET = PREVIOUS_CHAIN_LENGTH_OFFSET + 4
CIPHERTEXT_OFFSET = MESSAGE_NUMBER_OFFSET + 4


def new_device(seed: bytes, address: DeviceAddress, now_ms: int = NOW_MS) -> DeviceCrypto:
    random = SeededRandom(seed)
    return DeviceCrypto.create(ed25519_generate(random), random, address=address, now_ms=now_ms)


def bundle_of(device: DeviceCrypto, *, one_time: bool = True,
              kem_one_time: bool = True) -> PrekeyBundle:
    """What the relay would hand out for `device` (fresh one-time keys each call)."""
    return PrekeyBundle(
        identity_key=device.identity_key,
        signed_prekey=device.signed_prekey(),
        kem_prekey=(device.generate_kem_one_time_prekeys(1)[0] if kem_one_time
                    else device.kem_last_resort_prekey()),
        one_time_prekey=device.generate_one_time_prekeys(1)[0] if one_time else None,
    )


def introduce(*devices: DeviceCrypto) -> None:
    """Each device trusts every other's identity key, as the client does after checking the
    other account's signed device list."""
    for device in devices:
        for other in devices:
            if other is not device:
                device.trust_identity(other.address, other.identity_key)


def connect(sender: DeviceCrypto, recipient: DeviceCrypto, *, one_time: bool = True,
            kem_one_time: bool = True) -> None:
    """`sender` trusts `recipient` and starts a session from a fresh bundle of it."""
    sender.trust_identity(recipient.address, recipient.identity_key)
    sender.start_session(recipient.address,
                         bundle_of(recipient, one_time=one_time, kem_one_time=kem_one_time))


def connected_pair() -> tuple[DeviceCrypto, DeviceCrypto]:
    """Alice and Bob trust each other's keys; Alice has started a session; nothing sent."""
    alice, bob = new_device(b"alice", ALICE), new_device(b"bob", BOB)
    introduce(alice, bob)
    connect(alice, bob)
    return alice, bob


def send(sender: DeviceCrypto, recipient: DeviceAddress, text: bytes) -> bytes:
    return sender.encrypt(text, [recipient])[recipient]


def receive(recipient: DeviceCrypto, sender: DeviceCrypto, data: bytes) -> bytes:
    """Decrypt `data` as coming from `sender`, with its true identity key."""
    return recipient.decrypt(sender.address, data,
                             expected_identity_key=sender.identity_key).plaintext
