"""End-to-end cryptography throughput on one core: PQXDH handshakes and ratchet round trips.

    .venv/bin/python -m bench.crypto_bench [--runs 5] [--handshakes 200] [--pairs 2000]

- handshake: `DeviceCrypto.start_session` on a fresh bundle (verify two signatures, four
  X25519, one ML-KEM-1024 encapsulation, HKDF, first ratchet key) plus the responder's
  `decrypt` of the first message (four X25519, decapsulation, a DH ratchet step) -- one full
  PQXDH between two devices, initial message included.
- pair: one `encrypt` of a 256-byte plaintext and its `decrypt` on the other device, the two
  devices alternating every 10 messages so that DH ratchet steps are included as in a chat.

Prints each run and the median of each figure (JSON with --json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from crypto.device import DeviceAddress, DeviceCrypto
from crypto.prekeys import PrekeyBundle
from crypto.primitives import SystemRandom, ed25519_generate

PLAINTEXT_SIZE = 256  # Bytes: the loopback benchmark's message size.
MESSAGES_PER_TURN = 10  # Then the other side speaks, causing a DH ratchet step.
ALICE, BOB = DeviceAddress("alice", 1), DeviceAddress("bob", 1)


def new_device() -> DeviceCrypto:
    random = SystemRandom()
    return DeviceCrypto.create(ed25519_generate(random), random)


def fresh_bundle(device: DeviceCrypto) -> PrekeyBundle:
    return PrekeyBundle(identity_key=device.identity_key, signed_prekey=device.signed_prekey(),
                        kem_prekey=device.generate_kem_one_time_prekeys(1)[0],
                        one_time_prekey=device.generate_one_time_prekeys(1)[0])


def handshakes_per_second(count: int) -> float:
    bob = new_device()
    bundles = [fresh_bundle(bob) for _ in range(count)]  # Prekey generation is not timed.
    initiators = [new_device() for _ in range(count)]
    started = time.perf_counter()
    for index, (alice, bundle) in enumerate(zip(initiators, bundles, strict=True)):
        alice.start_session(BOB, bundle)
        initial = alice.encrypt(b"x", [BOB])[BOB]
        bob.decrypt(DeviceAddress("alice", index + 1), initial)
    return count / (time.perf_counter() - started)


def pairs_per_second(count: int) -> float:
    alice, bob = new_device(), new_device()
    alice.start_session(BOB, fresh_bundle(bob))
    bob.decrypt(ALICE, alice.encrypt(b"x", [BOB])[BOB])
    plaintext = b"m" * PLAINTEXT_SIZE
    started = time.perf_counter()
    for index in range(count):
        if (index // MESSAGES_PER_TURN) % 2 == 0:
            bob.decrypt(ALICE, alice.encrypt(plaintext, [BOB])[BOB])
        else:
            alice.decrypt(BOB, bob.encrypt(plaintext, [ALICE])[ALICE])
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--handshakes", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    runs = []
    for run in range(1, arguments.runs + 1):
        figures = {"handshakes_per_s": handshakes_per_second(arguments.handshakes),
                   "pairs_per_s": pairs_per_second(arguments.pairs)}
        runs.append(figures)
        if not arguments.json:
            print(f"run {run}: {figures['handshakes_per_s']:.1f} PQXDH handshakes/s, "
                  f"{figures['pairs_per_s']:.0f} encrypt+decrypt pairs/s")
    medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    if arguments.json:
        print(json.dumps({"runs": runs, "median": medians}))
    else:
        print(f"median: {medians['handshakes_per_s']:.1f} PQXDH handshakes/s, "
              f"{medians['pairs_per_s']:.0f} encrypt+decrypt pairs/s")


if __name__ == "__main__":
    main()
