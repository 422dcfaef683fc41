"""End-to-end encryption through the real ``cryptopass`` CLI (one process per command, so
every command restarts the client from its profile) against a real relay subprocess."""

from __future__ import annotations

import json
import re
import secrets
import shlex
from pathlib import Path

import trio

from bench.spawn import RelayProcess
from tests.test_cli_scenario import BIN, free_udp_port, last_code, run, start_relay

ALICE, BOB = "+33612345678", "+33698765432"


class Cli:
    """The relay subprocess and the commands the tests run against it."""

    def __init__(self, tmp_path: Path, relay: RelayProcess, port: int) -> None:
        self.tmp_path, self.relay, self.port = tmp_path, relay, port
        self.data = tmp_path / "D"
        self.codes_sent = 0

    def profile(self, name: str) -> str:
        return str(self.tmp_path / name)

    async def enrol(self, name: str, phone: str) -> None:
        await run("cryptopass", "--profile", self.profile(name), "enrol", phone, "--relay",
                  f"127.0.0.1:{self.port}", "--ca", str(self.data / "tls" / "cert.pem"))
        self.codes_sent += 1
        await self.relay.wait_for("sms_sent", self.codes_sent)
        await run("cryptopass", "--profile", self.profile(name), "verify",
                  last_code(self.data / "sms-outbox.jsonl", phone))

    async def send(self, name: str, phone: str, text: str) -> None:
        await run("cryptopass", "--profile", self.profile(name), "send", phone, text)

    async def receive(self, name: str) -> list[dict[str, object]]:
        output = await run("cryptopass", "--profile", self.profile(name), "receive",
                           "--timeout", "10")
        return [json.loads(line) for line in output.splitlines()]

    async def refused(self, *args: str) -> str:
        """Run a command that must fail; return its standard error."""
        with trio.fail_after(60):
            result = await trio.run_process([str(BIN / "cryptopass"), *args],
                                            capture_stdout=True, capture_stderr=True,
                                            check=False)
        assert result.returncode == 1, result.stdout
        return result.stderr.decode()


async def declare(data: Path, *phones: str) -> None:
    await run("cryptopass-relay", "admin", "--data-dir", str(data), "org", "create", "acme",
              "--seats", "10")
    for phone in phones:
        await run("cryptopass-relay", "admin", "--data-dir", str(data), "user", "add",
                  "--org", "acme", phone)


async def test_encrypted_exchange_leaves_no_plaintext_and_sessions_survive_restarts(
        tmp_path: Path) -> None:
    data = tmp_path / "D"
    await declare(data, ALICE, BOB)
    port = free_udp_port()
    markers = [f"marker-{secrets.token_hex(8)}" for _ in range(4)]
    async with trio.open_nursery() as nursery:
        cli = Cli(tmp_path, await start_relay(nursery, data, port), port)
        await cli.enrol("A", ALICE)
        await cli.enrol("B", BOB)
        assert (Path(cli.profile("A")) / "device.state").stat().st_mode & 0o777 == 0o600

        await cli.send("A", BOB, markers[0])   # first message: PQXDH, B offline
        await cli.send("A", BOB, markers[1])   # a new process: the saved session goes on
        received = await cli.receive("B")
        assert [(line["from"], line["text"]) for line in received] == [
            (ALICE, markers[0]), (ALICE, markers[1])]
        assert all(line["identity_changed"] is False for line in received)
        await cli.send("B", ALICE, markers[2])  # B answers on the session A started
        await cli.send("A", BOB, markers[3])
        [answer] = await cli.receive("A")
        assert (answer["from"], answer["to"], answer["text"]) == (BOB, ALICE, markers[2])
        [last] = await cli.receive("B")
        assert last["text"] == markers[3]

        numbers = [await run("cryptopass", "--profile", cli.profile(name), "safety-number",
                             phone) for name, phone in (("A", BOB), ("B", ALICE))]
        assert numbers[0] == numbers[1]
        assert len(numbers[0].replace(" ", "").strip()) == 60

        cli.relay.process.terminate()
        with trio.fail_after(10):
            await cli.relay.process.wait()
        nursery.cancel_scope.cancel()
    for path in data.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for marker in markers:
                assert marker.encode() not in content, path
    log_text = json.dumps(cli.relay.events)
    for secret in (*markers, ALICE, BOB):
        assert secret not in log_text


async def test_a_new_account_key_blocks_sending_until_trusted(tmp_path: Path) -> None:
    data = tmp_path / "D"
    await declare(data, ALICE, BOB)
    port = free_udp_port()
    async with trio.open_nursery() as nursery:
        cli = Cli(tmp_path, await start_relay(nursery, data, port), port)
        await cli.enrol("A", ALICE)
        await cli.enrol("B", BOB)
        await cli.send("A", BOB, "before")
        assert [line["text"] for line in await cli.receive("B")] == ["before"]

        # Bob enrols on a new phone by SMS: a new account identity; his old phone is revoked.
        await cli.enrol("B2", BOB)
        error = await cli.refused("--profile", cli.profile("A"), "send", BOB, "refused")
        assert f"the safety number with {BOB} changed" in error
        # The commands it names are ready to paste: they say which profile.
        assert f"`cryptopass --profile {cli.profile('A')} trust {BOB}`" in error
        assert f"`cryptopass --profile {cli.profile('A')} safety-number {BOB}`" in error
        assert len(error.splitlines()) == 1 and "Traceback" not in error
        assert await cli.receive("B2") == []  # nothing was sent, to any device
        revoked = await cli.refused("--profile", cli.profile("B"), "receive", "--timeout", "5")
        assert "this number was enrolled on another device" in revoked

        # B2 writes first: A reads it, with a warning, and still refuses to send.
        await cli.send("B2", ALICE, "from the new phone")
        with trio.fail_after(60):
            result = await trio.run_process(
                [str(BIN / "cryptopass"), "--profile", cli.profile("A"), "receive",
                 "--timeout", "10"], capture_stdout=True, capture_stderr=True, check=False)
        [line] = [json.loads(text) for text in result.stdout.decode().splitlines()]
        assert (line["text"], line["identity_changed"]) == ("from the new phone", True)
        assert f"warning: the safety number with {BOB} changed" in result.stderr.decode()
        assert f"`cryptopass --profile {cli.profile('A')} trust {BOB}`" in result.stderr.decode()
        await cli.refused("--profile", cli.profile("A"), "send", BOB, "still refused")

        theirs = await run("cryptopass", "--profile", cli.profile("B2"), "safety-number",
                           ALICE)
        with trio.fail_after(60):
            shown = await trio.run_process(
                [str(BIN / "cryptopass"), "--profile", cli.profile("A"), "safety-number", BOB],
                capture_stdout=True, capture_stderr=True, check=True)
        mine = shown.stdout.decode()
        assert mine == theirs
        wrong = "1" * 60
        await cli.refused("--profile", cli.profile("A"), "trust", BOB, "--safety-number",
                          wrong)
        # The warning names the trust command to paste, pinned to the digits just shown.
        [pasted] = re.findall(r"`(cryptopass [^`]*)`", shown.stderr.decode())
        assert pasted == shlex.join(["cryptopass", "--profile", cli.profile("A"), "trust", BOB,
                                     "--safety-number", mine.replace(" ", "").strip()])
        await run(*shlex.split(pasted))
        await cli.send("A", BOB, "after trust")
        assert [entry["text"] for entry in await cli.receive("B2")] == ["after trust"]

        devices = [json.loads(entry) for entry in (await run(
            "cryptopass", "--profile", cli.profile("B2"), "devices")).splitlines()]
        assert [(entry["device_id"], entry["this_device"], entry["list_version"])
                for entry in devices] == [(2, True, 1)]
        cli.relay.process.terminate()
        with trio.fail_after(10):
            await cli.relay.process.wait()
        nursery.cancel_scope.cancel()
