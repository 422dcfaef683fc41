"""``cryptopass send-file`` and ``receive --download-dir``, the real CLIs in subprocesses
against a relay process: one JSON line each, files saved 0600 only when asked, the relay's
size limit refused with a clear error."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import trio

from bench.spawn import BIN, spawn_relay
from client.transfer_bars import PROGRESS_MIN_BYTES, transfer_bars
from tests.test_cli_scenario import ALICE, BOB, last_code, run

LIMIT = 1024 * 1024  # the relay's blob_max_bytes in this test (ciphertext bytes)


async def cli(*args: str) -> tuple[int, str, str]:
    with trio.fail_after(120):
        result = await trio.run_process([str(BIN / "cryptopass"), *args], capture_stdout=True,
                                        capture_stderr=True, check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_send_file_and_receive_with_and_without_a_download_directory(
        tmp_path: Path) -> None:
    data = tmp_path / "D"
    profile_a, profile_b = str(tmp_path / "A"), str(tmp_path / "B")
    await run("cryptopass-relay", "admin", "--data-dir", str(data), "org", "create", "acme",
              "--seats", "10")
    for phone in (ALICE, BOB):
        await run("cryptopass-relay", "admin", "--data-dir", str(data), "user", "add",
                  "--org", "acme", phone)
    async with spawn_relay(data, f"--set=blob_max_bytes={LIMIT}") as relay:
        address, cert = f"127.0.0.1:{relay.port}", str(relay.cert)
        for count, (profile, phone) in enumerate(((profile_a, ALICE), (profile_b, BOB)), 1):
            await run("cryptopass", "--profile", profile, "enrol", phone, "--relay", address,
                      "--ca", cert)
            await relay.wait_for("sms_sent", count)
            await run("cryptopass", "--profile", profile, "verify",
                      last_code(data / "sms-outbox.jsonl", phone))
        notes = tmp_path / "notes.txt"
        notes.write_bytes(os.urandom(100_000))
        downloads = tmp_path / "downloads"
        downloads.mkdir()

        code, out, err = await cli("--profile", profile_a, "send-file", BOB, str(notes))
        assert (code, err) == (0, "")  # no progress bar: stderr is not a terminal
        sent = json.loads(out)
        assert sent == {"sent": True, "to": BOB, "message_id": sent["message_id"],
                        "devices": 1, "copies": 0, "sealed": False, "name": "notes.txt",
                        "size": 100_000}  # no delivery token of Bob's yet: not sealed
        [line] = [json.loads(text) for text in (await run(
            "cryptopass", "--profile", profile_b, "receive", "--timeout", "10")).splitlines()]
        assert (line["from"], line["name"], line["size"], line["media_type"]) == (
            ALICE, "notes.txt", 100_000, "text/plain")
        assert "file" not in line and "error" not in line
        assert list(downloads.iterdir()) == []  # not fetched without --download-dir

        await run("cryptopass", "--profile", profile_a, "send-file", BOB, str(notes))
        [line] = [json.loads(text) for text in (await run(
            "cryptopass", "--profile", profile_b, "receive", "--download-dir", str(downloads),
            "--timeout", "10")).splitlines()]
        saved = Path(line["file"])
        assert saved == downloads / "notes.txt"
        assert saved.read_bytes() == notes.read_bytes()
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600

        large = tmp_path / "large.bin"
        large.write_bytes(bytes(LIMIT))
        code, out, err = await cli("--profile", profile_a, "send-file", BOB, str(large))
        assert (code, out) == (1, "")
        assert err.startswith("error: the relay refused the file: BLOB_TOO_LARGE"), err
        assert await run("cryptopass", "--profile", profile_b, "receive", "--timeout",
                         "5") == ""  # nothing was announced

        code, out, err = await cli("--profile", profile_a, "send-file", BOB, str(tmp_path))
        assert (code, out) == (2, "")  # typer's usage error, naming the argument
        assert "Invalid value for 'PATH'" in err and "directory" in err


def test_progress_bars_go_to_stderr_and_only_on_a_terminal(
        capsys: pytest.CaptureFixture[str]) -> None:
    with transfer_bars(terminal=False) as progress:
        assert progress is None
    with transfer_bars(terminal=True) as progress:
        assert progress is not None
        progress("small.txt", 10, 100)  # below PROGRESS_MIN_BYTES: no bar
        for done in (0, PROGRESS_MIN_BYTES, 2 * PROGRESS_MIN_BYTES):
            progress("holiday.mp4", done, 2 * PROGRESS_MIN_BYTES)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "holiday.mp4" in captured.err and "small.txt" not in captured.err
