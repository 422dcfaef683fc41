"""``cryptopass group ...`` through the real CLI (one process per command) against a real relay
subprocess: create, send, receive with the group's name, add, remove, list; and the refusals
a user can cause."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from tests.test_cli_encryption import Cli, declare
from tests.test_cli_scenario import free_udp_port, run, start_relay

ALICE, BOB, CAROL = "+33612345678", "+33698765432", "+33611111111"


async def group(cli: Cli, name: str, *words: str) -> dict[str, object]:
    output = await run("cryptopass", "--profile", cli.profile(name), "group", *words)
    [line] = output.splitlines()
    answer: dict[str, object] = json.loads(line)
    return answer


async def test_group_commands_from_creation_to_removal(tmp_path: Path) -> None:
    data = tmp_path / "D"
    await declare(data, ALICE, BOB, CAROL)
    port = free_udp_port()
    async with trio.open_nursery() as nursery:
        cli = Cli(tmp_path, await start_relay(nursery, data, port), port)
        for name, phone in (("A", ALICE), ("B", BOB), ("C", CAROL)):
            await cli.enrol(name, phone)

        created = await group(cli, "A", "create", "Crew", BOB)
        assert (created["created"], created["group"], created["devices"]) == (True, "Crew", 1)
        sent = await group(cli, "A", "send", "Crew", "hello crew")
        assert (sent["sent"], sent["devices"]) == (True, 1)
        [line] = await cli.receive("B")
        assert (line["group"], line["from"], line["text"]) == ("Crew", ALICE, "hello crew")
        assert "to" not in line

        added = await group(cli, "A", "add", "Crew", CAROL)
        assert (added["added"], added["devices"], added["keys_sent"]) == (True, 2, 1)
        await group(cli, "A", "send", "Crew", "with carol")
        assert [(line["group"], line["text"]) for line in await cli.receive("C")] == [
            ("Crew", "with carol")]
        assert [line["text"] for line in await cli.receive("B")] == ["with carol"]
        listed = await run("cryptopass", "--profile", cli.profile("C"), "group", "list")
        assert json.loads(listed) == {"group": "Crew", "members": sorted([ALICE, BOB, CAROL])}

        removed = await group(cli, "A", "remove", "Crew", CAROL)
        assert (removed["removed"], removed["rekeyed"], removed["devices"]) == (True, True, 1)
        assert await cli.receive("B") == []  # the removal, applied (nothing to show)
        bob_sent = await group(cli, "B", "send", "Crew", "without carol")
        assert (bob_sent["devices"], bob_sent["rekeyed"]) == (1, True)
        assert [line["text"] for line in await cli.receive("A")] == ["without carol"]
        assert await cli.receive("C") == []

        refusal = await cli.refused("--profile", cli.profile("A"), "group", "send", "Nope", "x")
        assert "no group named 'Nope'" in refusal
        refusal = await cli.refused("--profile", cli.profile("A"), "group", "create", "Crew",
                                    BOB)
        assert "a group named 'Crew' exists" in refusal
        refusal = await cli.refused("--profile", cli.profile("A"), "group", "add", "Crew",
                                    "0612")
        assert "invalid phone number" in refusal
        cli.relay.process.terminate()
        with trio.fail_after(10):
            await cli.relay.process.wait()
        nursery.cancel_scope.cancel()
