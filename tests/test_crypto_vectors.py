"""Deterministic PQXDH + Double Ratchet vectors (tests/vectors/e2e_v2.json, message format 2).

The file lets an app in another language check itself byte for byte (docs/CRYPTO.md,
"Test vectors"). Every random value each device drew is listed, step by step, in draw order;
ML-KEM encapsulation has no derandomised API in `cryptography`, so its output (ciphertext and
shared secret) is recorded and replayed; Bob decapsulating the ciphertext checks it. Each
message lists its AEAD associated data (format 2 binds both addresses and the PQXDH header),
so another implementation can check how it rebuilds it.

Regenerate (only when the format changes on purpose, with a new format version):
    .venv/bin/python -m tests.test_crypto_vectors --write
"""

from __future__ import annotations

import builtins
import json
import sys
from pathlib import Path
from typing import Any

from crypto import pqxdh
from crypto.address import encode_address
from crypto.device import DeviceAddress, DeviceCrypto
from crypto.device_state import decode_device_state
from crypto.identity import identity_dh_public_key
from crypto.message_format import (
    MESSAGE_FORMAT_VERSION,
    PrekeyMessage,
    associated_data,
    decode_message,
)
from crypto.prekeys import PrekeyBundle, SignedPrekey
from crypto.primitives import (
    MlKem1024Encapsulation,
    SeededRandom,
    ed25519_generate,
    mlkem1024_encapsulate,
)

VECTORS = Path(__file__).parent / "vectors" / "e2e_v2.json"
ALICE = DeviceAddress("alice", 1)
BOB = DeviceAddress("bob", 2)  # Two device ids, so a swapped address shows.
CREATED_AT_MS = 1_767_225_600_000  # When both devices made their first prekeys.
CONVERSATION = [  # (sender, text): two prekey messages, a reply, a new ratchet step, empty text.
    ("alice", "hello bob"),
    ("alice", "are you there?"),
    ("bob", "yes, hello alice"),
    ("alice", "good: a new ratchet step"),
    ("bob", ""),
]


class RecordingRandom:
    """A SeededRandom whose draws are kept, so the vectors can list each one."""

    def __init__(self, seed: bytes) -> None:
        self._source = SeededRandom(seed)
        self._draws: list[bytes] = []

    def bytes(self, n: int) -> builtins.bytes:
        value = self._source.bytes(n)
        self._draws.append(value)
        return value

    def take(self) -> list[str]:
        draws, self._draws = self._draws, []
        return [draw.hex() for draw in draws]


def signed_json(prekey: SignedPrekey) -> dict[str, Any]:
    return {"key_id": prekey.key_id, "public_key": prekey.public_key.hex(),
            "signature": prekey.signature.hex()}


def message_associated_data(wire: bytes, sender: DeviceCrypto, recipient: DeviceCrypto) -> bytes:
    """The whole AEAD associated data of a message: `associated_data` || ratchet header."""
    message = decode_message(wire)
    prekey_header = message.prekey_header if isinstance(message, PrekeyMessage) else None
    ratchet_message = message.message if isinstance(message, PrekeyMessage) else message
    return associated_data(sender_identity_key=sender.identity_key,
                           recipient_identity_key=recipient.identity_key,
                           sender=sender.address, recipient=recipient.address,
                           prekey_header=prekey_header) + ratchet_message.header.encode()


def party(device: DeviceCrypto) -> dict[str, Any]:
    return {"user_id": device.address.user_id, "device_id": device.address.device_id,
            "address_encoding": encode_address(device.address).hex(),
            "identity_key": device.identity_key.hex(),
            "identity_x25519": identity_dh_public_key(device.identity_key).hex()}


def build(encapsulation: MlKem1024Encapsulation | None) -> dict[str, Any]:
    """Run the scripted exchange; replay `encapsulation` if given, else record a fresh one."""
    recorded: list[MlKem1024Encapsulation] = []

    def encapsulate(public_key: bytes) -> MlKem1024Encapsulation:
        result = encapsulation or mlkem1024_encapsulate(public_key)
        recorded.append(result)
        return result

    alice_random, bob_random = RecordingRandom(b"alice vector"), RecordingRandom(b"bob vector")
    steps: list[dict[str, Any]] = []
    bob_identity = ed25519_generate(bob_random)
    bob = DeviceCrypto.create(bob_identity, bob_random, address=BOB, now_ms=CREATED_AT_MS)
    steps.append({"step": "bob: identity seed, signed prekey private key, last-resort KEM seed",
                  "draws": bob_random.take()})
    alice_identity = ed25519_generate(alice_random)
    created = DeviceCrypto.create(alice_identity, alice_random, address=ALICE,
                                  now_ms=CREATED_AT_MS)
    alice = DeviceCrypto(decode_device_state(created.to_bytes()), alice_random, encapsulate)
    steps.append({"step": "alice: identity seed, signed prekey private key, last-resort KEM seed",
                  "draws": alice_random.take()})
    one_time = bob.generate_one_time_prekeys(1)[0]
    kem_one_time = bob.generate_kem_one_time_prekeys(1)[0]
    steps.append({"step": "bob: one-time X25519 private key, one-time KEM seed",
                  "draws": bob_random.take()})
    bundle = PrekeyBundle(identity_key=bob.identity_key, signed_prekey=bob.signed_prekey(),
                          kem_prekey=kem_one_time, one_time_prekey=one_time)
    # Each client found the other's identity key on its account's signed device list.
    alice.trust_identity(BOB, bob.identity_key)
    bob.trust_identity(ALICE, alice.identity_key)
    alice.start_session(BOB, bundle)
    steps.append({"step": "alice starts the session: base key private, first ratchet private",
                  "draws": alice_random.take()})
    session = decode_device_state(alice.to_bytes()).sessions[BOB][0]
    header = session.pending_prekey_header
    assert header is not None
    kem = recorded[0]
    bob_prekeys = decode_device_state(bob.to_bytes()).prekeys
    signed_pair = bob_prekeys.signed_prekey_pair(header.signed_prekey_id)
    kem_seed = bob_prekeys.kem_seed(header.kem_prekey_id)
    assert signed_pair is not None and kem_seed is not None
    shared_secret = pqxdh.respond(identity=bob_identity, header=header, signed_prekey=signed_pair,
                                  kem_seed=kem_seed,
                                  one_time_private_key=bob_prekeys.one_time_private_key(
                                      one_time.key_id))
    devices = {"alice": (alice, alice_random), "bob": (bob, bob_random)}
    messages = []
    for sender_name, text in CONVERSATION:
        sender, _ = devices[sender_name]
        recipient_name = "bob" if sender_name == "alice" else "alice"
        recipient, recipient_random = devices[recipient_name]
        wire = sender.encrypt(text.encode(), [recipient.address])[recipient.address]
        received = recipient.decrypt(sender.address, wire,
                                     expected_identity_key=sender.identity_key)
        assert received.plaintext == text.encode()
        messages.append({"from": sender_name, "to": recipient_name, "plaintext": text,
                         "associated_data": message_associated_data(wire, sender,
                                                                    recipient).hex(),
                         "wire": wire.hex(), "recipient_draws": recipient_random.take()})
    return {
        "format": "cryptopass e2e vectors v2 (docs/CRYPTO.md)",
        "message_format_version": MESSAGE_FORMAT_VERSION,
        "random_seeds": {"alice": b"alice vector".hex(), "bob": b"bob vector".hex()},
        "created_at_ms": CREATED_AT_MS,
        "alice": party(alice),
        "bob": party(bob),
        "setup_draws": steps,
        "bundle": {"identity_key": bundle.identity_key.hex(),
                   "signed_prekey": signed_json(bundle.signed_prekey),
                   "kem_prekey": signed_json(bundle.kem_prekey),
                   "one_time_prekey": {"key_id": one_time.key_id,
                                       "public_key": one_time.public_key.hex()}},
        "kem_encapsulation": {"ciphertext": kem.ciphertext.hex(),
                              "shared_secret": kem.shared_secret.hex()},
        "pqxdh_shared_secret": shared_secret.hex(),
        "messages": messages,
    }


def recorded_encapsulation(vectors: dict[str, Any]) -> MlKem1024Encapsulation:
    kem = vectors["kem_encapsulation"]
    return MlKem1024Encapsulation(ciphertext=bytes.fromhex(kem["ciphertext"]),
                                  shared_secret=bytes.fromhex(kem["shared_secret"]))


def test_the_exchange_reproduces_the_published_vectors_byte_for_byte() -> None:
    vectors = json.loads(VECTORS.read_text())
    assert build(recorded_encapsulation(vectors)) == vectors


def test_a_fresh_device_opens_the_published_messages_in_order() -> None:
    """Bob replayed from his seed alone opens Alice's recorded bytes (no shared Python state)."""
    vectors = json.loads(VECTORS.read_text())
    bob_random = SeededRandom(bytes.fromhex(vectors["random_seeds"]["bob"]))
    bob_address = DeviceAddress(vectors["bob"]["user_id"], vectors["bob"]["device_id"])
    alice_address = DeviceAddress(vectors["alice"]["user_id"], vectors["alice"]["device_id"])
    alice_key = bytes.fromhex(vectors["alice"]["identity_key"])
    bob = DeviceCrypto.create(ed25519_generate(bob_random), bob_random, address=bob_address,
                              now_ms=vectors["created_at_ms"])
    bob.generate_one_time_prekeys(1)
    bob.generate_kem_one_time_prekeys(1)
    bob.trust_identity(alice_address, alice_key)
    for message in vectors["messages"]:
        if message["to"] == "bob":
            received = bob.decrypt(alice_address, bytes.fromhex(message["wire"]),
                                   expected_identity_key=alice_key)
            assert received.plaintext.decode() == message["plaintext"]
        else:  # Keep Bob's ratchet in step: encrypt what he sent, compare the bytes.
            wire = bob.encrypt(message["plaintext"].encode(), [alice_address])[alice_address]
            assert wire.hex() == message["wire"]


def test_the_associated_data_follows_the_documented_layout() -> None:
    """Rebuilt by hand from docs/CRYPTO.md ("Message format"), not with crypto's functions."""
    vectors = json.loads(VECTORS.read_text())

    def address(name: str) -> bytes:
        user_id = vectors[name]["user_id"].encode()
        return (len(user_id).to_bytes(4, "big") + user_id
                + vectors[name]["device_id"].to_bytes(4, "big"))

    assert vectors["message_format_version"] == 2
    for message in vectors["messages"]:
        wire = bytes.fromhex(message["wire"])
        sender, recipient = message["from"], message["to"]
        expected = (b"cryptopass/2 message\x00" + bytes([2])
                    + bytes.fromhex(vectors[sender]["identity_key"])
                    + bytes.fromhex(vectors[recipient]["identity_key"])
                    + address(sender) + address(recipient))
        assert address(sender).hex() == vectors[sender]["address_encoding"]
        if wire[1] == 1:  # PREKEY: the 1645-byte PQXDH header, then the ratchet header.
            expected += wire[2:2 + 1645 + 40]
        else:
            expected += wire[2:2 + 40]
        assert message["associated_data"] == expected.hex()
    assert [bytes.fromhex(message["wire"])[1] for message in vectors["messages"]] == \
        [1, 1, 2, 2, 2]


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    VECTORS.write_text(json.dumps(build(None), indent=1) + "\n")
    print(f"wrote {VECTORS}")
