"""Wake-up pushes end to end: the real ``cryptopass`` CLI and a real relay subprocess whose Web
Push provider posts over loopback HTTP.

- ``push set/show/clear`` register, show and remove the target; refusals change nothing;
- ``receive --push-wait`` serves its own endpoint, registers it, disconnects, is woken by the
  relay when a message arrives, connects and prints it;
- what reaches a push service carries no sender, number, size or content (unique markers are
  searched for in the raw requests, as the privacy tests do).
"""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import trio

from bench.spawn import spawn_relay
from client.push import PUSH_FILE
from relay.push_factory import VAPID_KEY_FILE_NAME, load_or_create_vapid_key
from relay.push_webpush import WAKE_PAYLOAD
from tests.push_receivers import WebPushReceiver, serving
from tests.relay_processes import connect, declare, enrol
from tests.test_cli_encryption import ALICE, BOB, Cli
from tests.test_cli_encryption import declare as declare_cli
from tests.test_cli_scenario import BIN, free_udp_port, run

TIMEOUT_S = 90
"""Bound on each step that could hang (a relay, several CLI processes); not a timing check."""
PUSH_ARGS = ("--set", "push_webpush_subject=mailto:ops@example.org",
             "--set", "push_webpush_allow_loopback_http=true")


async def test_push_set_show_and_clear_from_the_command_line(tmp_path: Path) -> None:
    data = tmp_path / "D"
    await declare_cli(data, ALICE, BOB)
    port = free_udp_port()
    async with spawn_relay(data, *PUSH_ARGS, listen=f"127.0.0.1:{port}") as relay:
        cli = Cli(tmp_path, relay, port)
        await cli.enrol("B", BOB)
        profile = cli.profile("B")

        async def show() -> dict[str, object]:
            return dict(json.loads(await run("cryptopass", "--profile", profile, "push", "show")))

        assert await show() == {"provider": None}
        first = json.loads(await run("cryptopass", "--profile", profile, "push", "set",
                                     "--provider", "outbox"))
        again = json.loads(await run("cryptopass", "--profile", profile, "push", "set",
                                     "--provider", "outbox"))
        assert first["provider"] == "outbox" and first["token"] == again["token"]
        assert (await show())["token"] == first["token"]
        assert (Path(profile) / PUSH_FILE).stat().st_mode & 0o777 == 0o600

        # Refusals leave the registered target as it was.
        hostile = await cli.refused("--profile", profile, "push", "set", "--provider",
                                    "webpush", "--endpoint", "http://169.254.169.254/latest")
        assert "INVALID_PUSH_TARGET" in hostile and "nothing was registered" in hostile
        unavailable = await cli.refused("--profile", profile, "push", "set", "--provider",
                                        "fcm", "--token", "abc")
        assert "PUSH_PROVIDER_UNAVAILABLE" in unavailable
        assert await show() == {"provider": "outbox", "token": first["token"],
                                "keys_in_profile": False}

        webpush = json.loads(await run(
            "cryptopass", "--profile", profile, "push", "set", "--provider", "webpush",
            "--endpoint", "http://127.0.0.1:9/push/x"))
        assert (await show())["keys_in_profile"] is True
        assert webpush["provider"] == "webpush"

        await run("cryptopass", "--profile", profile, "push", "clear")
        assert await show() == {"provider": None}
        assert not (Path(profile) / PUSH_FILE).exists()


async def _wait_for_text(stream: trio.abc.ReceiveStream, text: bytes) -> bytes:
    seen = b""
    while text not in seen:
        chunk = await stream.receive_some()
        assert chunk, seen
        seen += chunk
    return seen


async def test_receive_push_wait_completes_the_whole_cycle(tmp_path: Path) -> None:
    data = tmp_path / "D"
    await declare_cli(data, ALICE, BOB)
    port = free_udp_port()
    marker = f"wake-marker-{secrets.token_hex(8)}"
    async with spawn_relay(data, *PUSH_ARGS, listen=f"127.0.0.1:{port}") as relay:
        cli = Cli(tmp_path, relay, port)
        await cli.enrol("A", ALICE)
        await cli.enrol("B", BOB)
        await cli.send("A", BOB, "already waiting")
        waiting = await trio.lowlevel.open_process(
            [str(BIN / "cryptopass"), "--profile", cli.profile("B"), "receive", "--push-wait",
             "--push-listen", "127.0.0.1:0", "--count", "2", "--timeout", str(TIMEOUT_S)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert waiting.stdout is not None and waiting.stderr is not None
        try:
            with trio.fail_after(TIMEOUT_S):
                # Registered, drained what was stored, disconnected: now only a push wakes it.
                await _wait_for_text(waiting.stderr, b"Waiting for a wake-up push")
                await cli.send("A", BOB, marker)
                assert await waiting.wait() == 0
        finally:
            waiting.kill()
        output = b""
        while chunk := await waiting.stdout.receive_some():
            output += chunk
        lines = [json.loads(line) for line in output.decode().splitlines()]
        assert [(line["from"], line["text"]) for line in lines] == [
            (ALICE, "already waiting"), (ALICE, marker)]
        # The endpoint died with the command: it removed its target on the way out.
        shown = json.loads(await run("cryptopass", "--profile", cli.profile("B"), "push",
                                     "show"))
        assert shown == {"provider": None}


async def test_a_push_carries_no_sender_number_size_or_content(tmp_path: Path) -> None:
    """The raw requests a push service receives, searched for everything about the message.

    The recipient registers, then the relay restarts before the send: the target is kept in the
    store, and no connection of the recipient can still be closing when the message arrives.
    """
    data = tmp_path / "D"
    data.mkdir()
    vapid = load_or_create_vapid_key(data / VAPID_KEY_FILE_NAME)
    receiver = WebPushReceiver(vapid.public_key())
    marker = secrets.token_hex(16).encode()
    size = 1234 + secrets.randbelow(100)
    payload = (marker * (size // len(marker) + 1))[:size]
    async with serving(receiver):
        endpoint, p256dh, auth = receiver.subscribe()
        async with spawn_relay(data, *PUSH_ARGS) as relay:
            await declare(None, data, [ALICE, BOB], organisation="acme")
            sender, recipient = await enrol(relay, ALICE), await enrol(relay, BOB)
            with trio.fail_after(TIMEOUT_S):
                async with connect(relay) as client:
                    await client.authenticate(recipient.user_id, recipient.device_id,
                                              recipient.key)
                    await client.set_push_target("webpush", endpoint, p256dh=p256dh, auth=auth)
        async with spawn_relay(data, *PUSH_ARGS) as relay:
            with trio.fail_after(TIMEOUT_S):
                async with connect(relay) as client:
                    await client.authenticate(sender.user_id, sender.device_id, sender.key)
                    await client.send(recipient.user_id, {recipient.device_id: payload},
                                      client_message_id=1, urgent=True)
                    (pushed,) = await receiver.wait_for(1)
    assert receiver.problems == []
    assert pushed.payload == WAKE_PAYLOAD
    assert pushed.headers["urgency"] == "high"
    # The host header names the receiver's port, whose digits may contain the size.
    headers = {name: value for name, value in pushed.headers.items() if name != "host"}
    raw = pushed.body + json.dumps(headers).encode() + pushed.path.encode()
    for secret in (marker, ALICE.encode(), BOB.encode(), ALICE[1:].encode(), BOB[1:].encode(),
                   sender.user_id.encode(), recipient.user_id.encode(), str(size).encode()):
        assert secret not in raw
        assert secret not in (pushed.payload or b"")
    # Nor does the relay's log name the endpoint (a capability) or its path.
    assert endpoint.rpartition("/")[2] not in json.dumps(relay.events)


async def test_receive_push_wait_explains_a_relay_that_refuses_loopback(tmp_path: Path) -> None:
    data = tmp_path / "D"
    await declare_cli(data, BOB)
    port = free_udp_port()
    async with spawn_relay(data, "--set", "push_webpush_subject=mailto:ops@example.org",
                           listen=f"127.0.0.1:{port}") as relay:
        cli = Cli(tmp_path, relay, port)
        await cli.enrol("B", BOB)
        refused = await cli.refused("--profile", cli.profile("B"), "receive", "--push-wait",
                                    "--timeout", str(TIMEOUT_S))
        assert "INVALID_PUSH_TARGET" in refused
        assert "push_webpush_allow_loopback_http = true" in refused
        assert not (Path(cli.profile("B")) / PUSH_FILE).exists()
