"""Sealed sender through the real ``cryptopass`` CLI (one process per command) against a real
relay subprocess: sends go sealed once a contact shared its profile key, ``receive`` shows the
sender as usual, ``delivery-token rotate`` and ``delivery-token off`` work as documented, a
hostile envelope is a warning line, and the relay's log never names a sealed sender."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import trio

from client.profile import Profile
from tests.test_cli_encryption import Cli, declare
from tests.test_cli_scenario import free_udp_port, run, start_relay
from tests.test_sealed_e2e import send_hostile

ALICE, BOB = "+33612345678", "+33698765432"


async def send(cli: Cli, name: str, phone: str, text: str) -> dict[str, object]:
    output = await run("cryptopass", "--profile", cli.profile(name), "send", phone, text)
    line: dict[str, object] = json.loads(output.splitlines()[-1])
    assert line["sent"] is True
    return line


async def token(cli: Cli, name: str, *words: str) -> dict[str, object]:
    output = await run("cryptopass", "--profile", cli.profile(name), "delivery-token", *words)
    line: dict[str, object] = json.loads(output.splitlines()[-1])
    return line


async def test_sealed_sends_rotation_and_organisation_mode_through_the_cli(
        tmp_path: Path) -> None:
    data = tmp_path / "D"
    await declare(data, ALICE, BOB)
    port = free_udp_port()
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, data, port)
        cli = Cli(tmp_path, relay, port)
        await cli.enrol("A", ALICE)
        await cli.enrol("B", BOB)
        shown = await token(cli, "A", "show")
        assert shown["mode"] == "token" and shown["profile_key"] is True
        assert shown["relay_keys"], "the relay's certificate key is pinned"

        # No token of Bob's yet: identified; Bob learns Alice's profile key with it.
        assert (await send(cli, "A", BOB, "hello"))["sealed"] is False
        [first] = await cli.receive("B")
        assert first["from"] == ALICE and first["sealed"] is False
        marker = f"sealed-{secrets.token_hex(8)}"
        answer = await send(cli, "B", ALICE, marker)
        assert answer["sealed"] is True and isinstance(answer["message_id"], str)
        [sealed] = await cli.receive("A")
        assert (sealed["from"], sealed["text"], sealed["sealed"]) == (BOB, marker, True)
        assert sealed["sender_device_id"] == 1 and sealed["identity_changed"] is False
        assert (await token(cli, "A", "show"))["contacts_holding_it"] == 1

        # Rotation: the relay refuses Bob's old token at once; his client falls back to an
        # identified send, then reads Alice's new key and seals again.
        rotated = await token(cli, "A", "rotate")
        assert rotated == {"rotated": True, "generation": 1, "contacts_told": 1}
        assert (await send(cli, "B", ALICE, "old token"))["sealed"] is False
        assert await cli.receive("B") == []  # the new key: a control message, not shown
        assert (await send(cli, "B", ALICE, "new token"))["sealed"] is True
        assert [(line["text"], line["sealed"]) for line in await cli.receive("A")] == [
            ("old token", False), ("new token", True)]

        # Tokens off (organisation mode): Bob's token is refused; as a member of Alice's
        # organisation he seals from his own connection instead, and she still reads him.
        assert await token(cli, "A", "off") == {"mode": "organisation"}
        assert (await token(cli, "A", "show"))["mode"] == "organisation"
        assert (await send(cli, "B", ALICE, "colleague"))["sealed"] is True
        [colleague] = await cli.receive("A")
        assert (colleague["from"], colleague["sealed"]) == (BOB, True)
        assert await token(cli, "A", "on") == {"mode": "token"}

        # A forged certificate: refused, printed as a warning, never as a message.
        bob, alice = Profile(Path(cli.profile("B"))), Profile(Path(cli.profile("A")))
        keys = (await token(cli, "A", "show"))["relay_keys"]
        assert isinstance(keys, list)
        await send_hostile_to_cli(cli, bob, alice, key_id=int(keys[0]["key_id"]))
        [warning] = await cli.receive("A")
        assert set(warning) == {"warning", "accepted_at"}
        assert "sealed message refused" in str(warning["warning"])

        # The relay's log of the whole run never names a sealed sender's user.
        bob_user = bob.data.user_id
        assert bob_user is not None
        assert relay.events and bob_user not in json.dumps(relay.events)
        nursery.cancel_scope.cancel()


async def send_hostile_to_cli(cli: Cli, bob: Profile, alice: Profile, *, key_id: int) -> None:
    from crypto.primitives import SystemRandom, ed25519_generate

    class _Relay:  # what send_hostile reads of a relay under test
        port = cli.port

        class running:
            cert_path = cli.data / "tls" / "cert.pem"

    assert bob.data.user_id is not None
    await send_hostile(_Relay(), bob, alice, certificate_for=bob.data.user_id,  # type: ignore[arg-type]
                       signer=ed25519_generate(SystemRandom()).private_key, key_id=key_id,
                       expires_ms=4_102_444_800_000)
