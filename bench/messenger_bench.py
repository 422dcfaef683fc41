"""End-to-end messages/s between two devices over loopback: encrypted versus plaintext.

    .venv/bin/python -m bench.messenger_bench [--runs 3] [--messages 500] [--json]

One relay (in this process, on a temporary data directory) and two enrolled devices,
Alice's and Bob's. Each run sends ``--messages`` texts of PLAINTEXT_SIZE bytes from Alice
to Bob while Bob receives and acknowledges them, and times first send to last receipt:

- ``encrypted``: `client.messenger.Messenger` on both sides: content encoding, Double
  Ratchet encrypt and decrypt, and the profile's state written (fsync) after every change,
  as ``cryptopass`` does. The session already exists (the first PQXDH happens in warm-up).
- ``plaintext``: the previous path: `RelayClient.send` of the same content bytes, unencrypted,
  and `RelayClient.deliveries` + `acknowledge` on Bob's side.

Both send one message at a time (each SEND awaits SEND_ACCEPTED before the next, as the
CLI and `Messenger.send_text` do), so the figures compare the per-message cost of the two
paths, not pipelining. Prints each run and the medians.
"""

from __future__ import annotations

import argparse
import datetime
import json
import secrets
import statistics
import tempfile
import time
from contextlib import aclosing
from pathlib import Path

import trio
from nacl.signing import SigningKey

from client.connection import connect_relay
from client.message_content import encode_content
from client.messenger import Messenger, create_device_state
from client.profile import Profile
from enrolment import admin
from enrolment.sms import SmsMessage
from relay.server import RunningRelay, serve
from relay.settings import RelaySettings
from storage.sqlite import open_sqlite_store
from wire.frames import Deliver

__all__ = ["main"]

PLAINTEXT_SIZE = 256  # Bytes of text per message, as bench.loopback and bench.crypto_bench.
ALICE, BOB = "+33612345678", "+33698765432"
WAIT_SECONDS = 120.0  # Bound on one run; not a measurement.


async def _enrol(running: RunningRelay, codes: list[SmsMessage], arrived: list[trio.Event],
                 directory: Path, phone: str) -> Profile:
    profile = Profile(directory)
    key: SigningKey = profile.signing_key(create=True)
    host, port = running.address[0], running.address[1]
    async with connect_relay(host, port, ca=running.cert_path) as client:
        count = len(codes)
        await client.enrol_start(phone)
        while len(codes) == count:
            await arrived[0].wait()
        code = next(word for word in codes[-1].body.replace(".", " ").split()
                    if word.isdigit() and len(word) == 6)
        user_id, device_id = await client.enrol_verify(phone, code, key.verify_key.encode())
    profile.data.relay, profile.data.ca = f"{host}:{port}", str(running.cert_path)
    profile.data.phone, profile.data.user_id, profile.data.device_id = phone, user_id, device_id
    profile.save()
    create_device_state(profile)
    return profile


async def _encrypted_run(alice: Profile, bob: Profile, messages: int) -> float:
    text = "x" * PLAINTEXT_SIZE
    done = trio.Event()
    async with Messenger.connect(alice) as sender, Messenger.connect(bob) as receiver:
        async def receive() -> None:
            received = 0
            async with aclosing(receiver.messages()) as stream:
                async for _ in stream:
                    received += 1
                    if received == messages:
                        done.set()
                        return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            started = time.perf_counter()
            for _ in range(messages):
                await sender.send_text(BOB, text)
            await done.wait()
            return time.perf_counter() - started


async def _plaintext_run(alice: Profile, bob: Profile, messages: int) -> float:
    content = encode_content(sender_phone=ALICE, recipient_phone=BOB, text="x" * PLAINTEXT_SIZE,
                             sent_at=datetime.datetime.now(datetime.UTC))
    done = trio.Event()
    host, port = (alice.data.relay or "").rsplit(":", 1)
    ca = Path(alice.data.ca or "")
    async with connect_relay(host, int(port), ca=ca) as sender, connect_relay(
            host, int(port), ca=ca) as receiver:
        for client, profile in ((sender, alice), (receiver, bob)):
            user_id, device_id, _, _ = profile.require_enrolled()
            await client.authenticate(user_id, device_id, profile.signing_key())
        bob_user, bob_device, _, _ = bob.require_enrolled()

        async def receive() -> None:
            received = 0
            async for delivery in receiver.deliveries():
                if isinstance(delivery, Deliver):
                    receiver.acknowledge(delivery.envelope_id)
                    received += 1
                    if received == messages:
                        done.set()
                        return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            started = time.perf_counter()
            for _ in range(messages):
                await sender.send(bob_user, {bob_device: content},
                                  client_message_id=secrets.randbelow(2**63))
            await done.wait()
            return time.perf_counter() - started


async def _benchmark(runs: int, messages: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"encrypted": [], "plaintext": []}
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        settings = RelaySettings(data_dir=root / "relay", listen_port=0)
        settings.data_dir.mkdir()
        async with open_sqlite_store(settings.data_dir / "relay.db") as store:
            await admin.create_organisation(store, "bench", 10, 0)
            for phone in (ALICE, BOB):
                await admin.declare_user(store, "bench", phone, 0)
        codes: list[SmsMessage] = []
        arrived = [trio.Event()]

        def on_sms(message: SmsMessage) -> None:
            codes.append(message)
            arrived[0].set()
            arrived[0] = trio.Event()

        async with trio.open_nursery() as nursery:
            running: RunningRelay = await nursery.start(
                lambda task_status: serve(settings, task_status=task_status,
                                          on_sms_sent=on_sms))
            alice = await _enrol(running, codes, arrived, root / "A", ALICE)
            bob = await _enrol(running, codes, arrived, root / "B", BOB)
            with trio.fail_after(WAIT_SECONDS):
                await _encrypted_run(alice, bob, 10)  # warm-up: prekeys, first PQXDH
            for run in range(1, runs + 1):
                for kind, measure in (("encrypted", _encrypted_run),
                                      ("plaintext", _plaintext_run)):
                    with trio.fail_after(WAIT_SECONDS):
                        seconds = await measure(alice, bob, messages)
                    results[kind].append(messages / seconds)
                    print(f"run {run} {kind}: {messages / seconds:.1f} messages/s", flush=True)
            running.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    results = trio.run(_benchmark, arguments.runs, arguments.messages)
    medians = {kind: statistics.median(values) for kind, values in results.items()}
    if arguments.json:
        print(json.dumps({"runs": results, "medians": medians}))
    else:
        for kind, value in medians.items():
            print(f"median {kind}: {value:.1f} messages/s")


if __name__ == "__main__":
    main()
