"""The README's scenario, command by command, with the real CLIs in subprocesses:
the relay killed with SIGKILL in the middle keeps what it accepted."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import trio

from bench.spawn import SpawnedRelay, spawn_relay

ALICE, BOB = "+33612345678", "+33698765432"
BIN = Path(sys.executable).parent


async def run(*args: str, timeout: float = 60) -> str:
    """Run a CLI command to completion; return its standard output."""
    with trio.fail_after(timeout):
        result = await trio.run_process([str(BIN / args[0]), *args[1:]], capture_stdout=True,
                                        capture_stderr=True, check=False)
    assert result.returncode == 0, (args, result.stderr.decode())
    return result.stdout.decode()


async def start_relay(nursery: trio.Nursery, data_dir: Path, port: int) -> SpawnedRelay:
    """A relay on ``port`` until it exits (a test may kill it and start another on the same
    port) or ``nursery`` is cancelled, which stops it."""
    relay: SpawnedRelay = await nursery.start(_relay_until_it_exits, data_dir, port)
    return relay


async def _relay_until_it_exits(data_dir: Path, port: int, *,
                                task_status: trio.TaskStatus[SpawnedRelay]) -> None:
    async with spawn_relay(data_dir, listen=f"127.0.0.1:{port}") as relay:
        task_status.started(relay)
        await relay.process.wait()


def last_code(outbox: Path, phone: str) -> str:
    lines = [json.loads(line) for line in outbox.read_text().splitlines()]
    body = next(line["body"] for line in reversed(lines) if line["to"] == phone)
    return next(word for word in body.replace(".", " ").split() if word.isdigit()
                and len(word) == 6)


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_readme_scenario_survives_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "D"
    profile_a, profile_b = str(tmp_path / "A"), str(tmp_path / "B")
    await run("cryptopass-relay", "admin", "--data-dir", str(data), "org", "create", "acme",
              "--seats", "10")
    for phone in (ALICE, BOB):
        await run("cryptopass-relay", "admin", "--data-dir", str(data), "user", "add",
                  "--org", "acme", phone)
    listed = json.loads(await run("cryptopass-relay", "admin", "--data-dir", str(data),
                                  "--json", "user", "list", "--org", "acme"))
    assert [(user["phone"], user["state"]) for user in listed] == [
        (ALICE, "declared"), (BOB, "declared")]
    port = free_udp_port()
    address = f"127.0.0.1:{port}"
    cert = str(data / "tls" / "cert.pem")
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, data, port)
        for count, (profile, phone) in enumerate(((profile_a, ALICE), (profile_b, BOB)), 1):
            await run("cryptopass", "--profile", profile, "enrol", phone, "--relay", address,
                      "--ca", cert)
            await relay.wait_for("sms_sent", count)
            refused = await trio.run_process(
                [str(BIN / "cryptopass"), "--profile", profile, "verify", "000000"
                 if last_code(data / "sms-outbox.jsonl", phone) != "000000" else "111111"],
                capture_stdout=True, capture_stderr=True, check=False)
            assert refused.returncode == 1
            assert refused.stderr.decode().startswith(
                "error: the relay refused: VERIFICATION_FAILED"), refused.stderr
            await run("cryptopass", "--profile", profile, "verify",
                      last_code(data / "sms-outbox.jsonl", phone))
        assert (Path(profile_a) / "identity.key").stat().st_mode & 0o777 == 0o600
        sent = json.loads(await run("cryptopass", "--profile", profile_a, "send", BOB, "hello"))
        assert sent == {"sent": True, "to": BOB, "message_id": sent["message_id"],
                        "devices": 1, "copies": 0, "sealed": False}  # no token of Bob's yet
        assert isinstance(sent["message_id"], int)
        relay.process.send_signal(signal.SIGKILL)
        await relay.process.wait()

        relay = await start_relay(nursery, data, port)
        first = await run("cryptopass", "--profile", profile_b, "receive", "--timeout", "5")
        [message] = [json.loads(line) for line in first.splitlines()]
        assert (message["from"], message["text"]) == (ALICE, "hello")
        assert message["sent_at"].startswith("20")
        again = await run("cryptopass", "--profile", profile_b, "receive", "--timeout", "2")
        assert again == ""

        async with trio.open_nursery() as clients:
            outputs: list[str] = []

            async def follow() -> None:
                outputs.append(await run("cryptopass", "--profile", profile_b, "receive",
                                         "--follow", "--count", "1", "--timeout", "30"))

            clients.start_soon(follow)
            await relay.wait_for("device_authenticated", 3)  # B is online (its third connection)
            await run("cryptopass", "--profile", profile_a, "send", BOB, "live")
        assert [json.loads(line)["text"] for line in outputs[0].splitlines()] == ["live"]
        relay.process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await relay.process.wait() == 0
        nursery.cancel_scope.cancel()
    log_text = json.dumps(relay.events)
    for secret in (ALICE, BOB, "hello", "live"):
        assert secret not in log_text
