"""Two `cryptopass send` processes on one profile, at the same time: the profile's lock makes
them take turns, each reloading what the other saved, so they never encrypt from the same
chain position (which would reuse an AES-GCM key and nonce)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import trio

from client.profile import Profile
from crypto.message_format import PrekeyMessage, decode_message
from tests.account_support import TIMEOUT_S, enrolled_profile, send, texts
from tests.conftest import RelayUnderTest
from wire.frames import QueueEmpty

ALICE, BOB = "+33612345678", "+33698765432"
CRYPTOPASS = Path(sys.executable).parent / "cryptopass"
SENDERS = 2


async def _raw_ciphertexts(relay: RelayUnderTest, profile: Profile) -> list[bytes]:
    """What is queued for ``profile``'s device, as the relay delivers it (not acknowledged)."""
    user_id, device_id, _, _ = profile.require_enrolled()
    found = []
    async with relay.connect() as client:
        await client.authenticate(user_id, device_id, profile.signing_key())
        async for delivery in client.deliveries():
            if isinstance(delivery, QueueEmpty):
                break
            found.append(delivery.ciphertext)
    return found


async def test_concurrent_sends_on_one_profile_never_share_a_chain_position(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice = await enrolled_profile(relay, tmp_path / "alice", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "bob", BOB)
    await send(alice, BOB, "first, to start the session")
    assert await texts(bob) == [(ALICE, BOB, "first, to start the session")]

    outputs: list[dict[str, object]] = []

    async def send_process(index: int) -> None:
        result = await trio.run_process(
            [str(CRYPTOPASS), "--profile", str(alice.directory), "send", BOB, f"concurrent {index}"],
            capture_stdout=True, capture_stderr=True, check=False)
        assert result.returncode == 0, result.stderr.decode()
        outputs.append(json.loads(result.stdout))

    with trio.fail_after(TIMEOUT_S * 2):
        async with trio.open_nursery() as nursery:
            for index in range(SENDERS):
                nursery.start_soon(send_process, index)
    assert all(output["sent"] for output in outputs)

    ciphertexts = await _raw_ciphertexts(relay, bob)
    assert len(ciphertexts) == SENDERS
    positions = []
    for ciphertext in ciphertexts:
        message = decode_message(ciphertext)
        inner = message.message if isinstance(message, PrekeyMessage) else message
        positions.append((inner.header.ratchet_key, inner.header.message_number))
    assert len(set(positions)) == SENDERS, positions
    assert sorted(text for _, _, text in await texts(bob)) == [
        f"concurrent {index}" for index in range(SENDERS)]


async def test_a_send_beside_a_follower_works_and_the_follower_carries_on(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice = await enrolled_profile(relay, tmp_path / "alice", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "bob", BOB)
    follower = await trio.lowlevel.open_process(
        [str(CRYPTOPASS), "--profile", str(alice.directory), "receive", "--follow",
         "--count", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert follower.stdout is not None
    lines = _Lines(follower.stdout)
    try:
        with trio.fail_after(TIMEOUT_S * 2):
            await send(bob, ALICE, "one")
            assert json.loads(await lines.next())["text"] == "one"  # the follower is live
            # A send on the same profile takes the device's connection for a moment...
            result = await trio.run_process(
                [str(CRYPTOPASS), "--profile", str(alice.directory), "send", BOB, "beside"],
                capture_stdout=True, capture_stderr=True, check=False)
            assert result.returncode == 0, result.stderr.decode()
            # ... and the follower reconnects after it and goes on receiving.
            await send(bob, ALICE, "two")
            assert json.loads(await lines.next())["text"] == "two"
            assert await follower.wait() == 0
    finally:
        if follower.returncode is None:
            follower.kill()
            await follower.wait()
    assert [text for _, _, text in await texts(bob)] == ["beside"]


class _Lines:
    """Lines of a process's output, as they come."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream, self._buffer = stream, b""

    async def next(self) -> str:
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some()
            if not chunk:
                raise EOFError("the process closed its output")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()
