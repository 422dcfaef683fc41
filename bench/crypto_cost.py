"""The ``crypto`` scenario: end-to-end cryptography on one core, no relay, no network.

    cryptopass-bench crypto [--runs 5] [--handshakes 200] [--pairs 2000] [--json]

- handshake: `DeviceCrypto.start_session` on a fresh bundle (verify two signatures, four
  X25519, one ML-KEM-1024 encapsulation, HKDF, first ratchet key) plus the responder's
  `decrypt` of the first message (four X25519, decapsulation, a DH ratchet step) -- one full
  PQXDH between two devices, initial message included.
- pair: one `encrypt` of a 256-byte plaintext and its `decrypt` on the other device, the two
  devices alternating every 10 messages so that DH ratchet steps are included as in a chat.

Reports each run and the median of each figure.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from crypto.device import DeviceAddress, DeviceCrypto
from crypto.prekeys import PrekeyBundle
from crypto.primitives import SystemRandom, ed25519_generate

__all__ = ["handshakes_per_second", "measure", "pairs_per_second"]

PLAINTEXT_SIZE = 256  # Bytes: the exchange scenario's default message size.
MESSAGES_PER_TURN = 10  # Then the other side speaks, causing a DH ratchet step.
ALICE, BOB = DeviceAddress("alice", 1), DeviceAddress("bob", 1)


def new_device(address: DeviceAddress) -> DeviceCrypto:
    random = SystemRandom()
    return DeviceCrypto.create(ed25519_generate(random), random, address=address,
                               now_ms=time.time_ns() // 1_000_000)


def _introduce(device: DeviceCrypto, peer: DeviceCrypto) -> None:
    """What a client does from the peer's signed device list: accept its identity key."""
    device.trust_identity(peer.address, peer.identity_key)


def fresh_bundle(device: DeviceCrypto) -> PrekeyBundle:
    return PrekeyBundle(identity_key=device.identity_key, signed_prekey=device.signed_prekey(),
                        kem_prekey=device.generate_kem_one_time_prekeys(1)[0],
                        one_time_prekey=device.generate_one_time_prekeys(1)[0])


def handshakes_per_second(count: int) -> float:
    bob = new_device(BOB)
    bundles = [fresh_bundle(bob) for _ in range(count)]  # Prekey generation is not timed.
    initiators = [new_device(DeviceAddress("alice", index + 1)) for index in range(count)]
    for alice in initiators:
        _introduce(alice, bob)
    started = time.perf_counter()
    for alice, bundle in zip(initiators, bundles, strict=True):
        alice.start_session(BOB, bundle)
        initial = alice.encrypt(b"x", [BOB])[BOB]
        bob.decrypt(alice.address, initial, expected_identity_key=alice.identity_key)
    return count / (time.perf_counter() - started)


def pairs_per_second(count: int) -> float:
    alice, bob = new_device(ALICE), new_device(BOB)
    _introduce(alice, bob)
    _introduce(bob, alice)
    alice.start_session(BOB, fresh_bundle(bob))
    bob.decrypt(ALICE, alice.encrypt(b"x", [BOB])[BOB], expected_identity_key=alice.identity_key)
    plaintext = b"m" * PLAINTEXT_SIZE
    started = time.perf_counter()
    for index in range(count):
        if (index // MESSAGES_PER_TURN) % 2 == 0:
            bob.decrypt(ALICE, alice.encrypt(plaintext, [BOB])[BOB],
                        expected_identity_key=alice.identity_key)
        else:
            alice.decrypt(BOB, bob.encrypt(plaintext, [ALICE])[ALICE],
                          expected_identity_key=bob.identity_key)
    return count / (time.perf_counter() - started)


def measure(*, runs: int, handshakes: int, pairs: int) -> dict[str, Any]:
    """``runs`` runs of ``handshakes`` handshakes and ``pairs`` pairs; each run and the
    medians (progress on standard error)."""
    handshake_rates, pair_rates = [], []
    for run in range(1, runs + 1):
        handshake_rates.append(round(handshakes_per_second(handshakes), 1))
        pair_rates.append(round(pairs_per_second(pairs), 1))
        print(f"run {run}: {handshake_rates[-1]:.1f} PQXDH handshakes/s, "
              f"{pair_rates[-1]:.0f} encrypt+decrypt pairs/s", file=sys.stderr, flush=True)
    return {"scenario": "crypto", "runs": runs, "handshakes": handshakes, "pairs": pairs,
            "handshakes_per_second": handshake_rates, "pairs_per_second": pair_rates,
            "median_handshakes_per_second": round(statistics.median(handshake_rates), 1),
            "median_pairs_per_second": round(statistics.median(pair_rates), 1)}
