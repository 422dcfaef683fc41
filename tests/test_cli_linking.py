"""Linking through the real ``cryptopass`` CLI against a relay subprocess: `link` on a new
device shows a code (and its QR code), `devices approve CODE` on a device of the account adds
it, both then send and receive, and `devices remove ID` cuts it off."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import trio

from tests.test_cli_encryption import ALICE, BOB, Cli, declare
from tests.test_cli_scenario import BIN, free_udp_port, run, start_relay

TIMEOUT_S = 60


async def _code_from(process: trio.Process) -> tuple[str, bytes]:
    """Read the new device's output until it shows the link code; return it and the output."""
    assert process.stdout is not None
    output = b""
    with trio.fail_after(TIMEOUT_S):
        while b"cryptopass devices approve" not in output:
            chunk = await process.stdout.receive_some()
            assert chunk, output
            output += chunk
    match = re.search(rb"Link code: (CPL1-[A-Z2-7]+)", output)
    assert match is not None, output
    return match.group(1).decode(), output


async def test_link_approve_use_and_remove_from_the_command_line(tmp_path: Path) -> None:
    data = tmp_path / "D"
    await declare(data, ALICE, BOB)
    port = free_udp_port()
    async with trio.open_nursery() as nursery:
        cli = Cli(tmp_path, await start_relay(nursery, data, port), port)
        await cli.enrol("A", ALICE)
        await cli.enrol("B", BOB)
        await cli.send("B", ALICE, "before the laptop")

        laptop = await trio.lowlevel.open_process(
            [str(BIN / "cryptopass"), "--profile", cli.profile("A-laptop"), "link", "--relay",
             f"127.0.0.1:{port}", "--ca", str(data / "tls" / "cert.pem")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        code, shown = await _code_from(laptop)
        assert "\u2588" in shown.decode() or "\u2580" in shown.decode()  # the QR code
        approved = json.loads(await run("cryptopass", "--profile", cli.profile("A"), "devices",
                                        "approve", code))
        with trio.fail_after(TIMEOUT_S):
            assert await laptop.wait() == 0
        assert laptop.stdout is not None
        linked = json.loads((await laptop.stdout.receive_some()).decode().splitlines()[-1])
        assert linked["device_id"] == approved["device_id"] == 2
        assert linked["list_version"] == approved["list_version"] == 2

        listed = [json.loads(line) for line in (await run(
            "cryptopass", "--profile", cli.profile("A-laptop"), "devices")).splitlines()]
        assert [(entry["device_id"], entry["this_device"]) for entry in listed] == [
            (1, False), (2, True)]
        # The laptop sends; Bob reads it with no warning, Alice's phone gets the copy.
        await cli.send("A-laptop", BOB, "from the laptop")
        [line] = await cli.receive("B")
        assert (line["from"], line["text"], line["identity_changed"]) == (
            ALICE, "from the laptop", False)
        assert [entry["text"] for entry in await cli.receive("A")] == [
            "before the laptop", "from the laptop"]

        removed = json.loads(await run("cryptopass", "--profile", cli.profile("A"), "devices",
                                       "remove", "2"))
        assert (removed["device_id"], removed["list_version"]) == (2, 3)
        refused = await cli.refused("--profile", cli.profile("A-laptop"), "receive",
                                    "--timeout", "5")
        assert "removed from its account" in refused
        # The hint links it again; it warns that an SMS enrolment would make a new account.
        assert "link it from a device still on the account" in refused
        assert "creates a new account instead, and revokes every device" in refused
        cli.relay.process.terminate()
        with trio.fail_after(10):
            await cli.relay.process.wait()
        nursery.cancel_scope.cancel()
