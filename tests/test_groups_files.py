"""``cryptopass group send-file`` and ``receive --download-dir`` through the real CLI (one
process per command) against a real relay subprocess: a file sent to a group of three is
uploaded once, stored once, and every other member saves the same bytes; the refusals a user
can cause send nothing."""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
import stat
from contextlib import closing
from pathlib import Path

import msgpack
import pytest
import trio

from client.group_messaging import send_group_file, send_group_text
from client.groups import (
    MAX_GROUP_FILE_ANNOUNCEMENT_BYTES,
    GroupContentError,
    GroupFile,
    decode_group_content,
    encode_group_file,
)
from client.message_content import FileMessage, encode_content, encode_file_content
from client.messenger import IdentityChangedError, Messenger, _group_file
from tests.account_support import TIMEOUT_S, enrolled_profile
from tests.conftest import RelayUnderTest
from tests.group_support import start_group
from tests.test_cli_encryption import Cli, declare
from tests.test_cli_groups import ALICE, BOB, CAROL, group
from tests.test_cli_scenario import free_udp_port, run, start_relay


def largest_announcement() -> bytes:
    """A file announcement with every field at its limit."""
    return encode_file_content(
        sender_phone="+" + "1" * 31, recipient_phone="",
        sent_at=datetime.datetime.now(datetime.UTC), blob_id=bytes(64), key=bytes(32),
        digest=bytes(32), size=2**40, chunk_size=1024 * 1024, name="\u00e9" * 127 + "x",
        media_type="a" * 127)


def test_a_group_file_carries_the_announcement_within_its_limit() -> None:
    announcement = largest_announcement()
    assert len(announcement) < MAX_GROUP_FILE_ANNOUNCEMENT_BYTES // 2
    decoded = decode_group_content(encode_group_file(announcement))
    assert decoded == GroupFile(announcement=announcement)
    file = _group_file(decoded)
    assert isinstance(file, FileMessage) and file.size == 2**40
    assert repr(decoded) == f"GroupFile(bytes={len(announcement)})"  # the key and blob id never reach a log line

    too_long = bytes(MAX_GROUP_FILE_ANNOUNCEMENT_BYTES + 1)
    with pytest.raises(ValueError, match="longer than"):
        encode_group_file(too_long)
    for value in (too_long, "text", None):
        with pytest.raises(GroupContentError, match="'file'"):
            decode_group_content(msgpack.packb({"v": 1, "kind": "file", "file": value}))


def test_a_group_file_that_announces_no_file_is_shown_as_a_problem() -> None:
    text = encode_content(sender_phone="+33612345678", recipient_phone="", text="hi",
                          sent_at=datetime.datetime.now(datetime.UTC))
    assert _group_file(GroupFile(announcement=text)) == (
        "a group file message that announces no file")
    problem = _group_file(GroupFile(announcement=b"\xc1"))
    assert isinstance(problem, str) and problem.startswith("a group file announcement that")


async def receive_into(cli: Cli, name: str, downloads: Path | None) -> list[dict[str, object]]:
    where = [] if downloads is None else ["--download-dir", str(downloads)]
    output = await run("cryptopass", "--profile", cli.profile(name), "receive", *where,
                       "--timeout", "10")
    return [json.loads(line) for line in output.splitlines()]


def stored_blobs(data: Path) -> tuple[int, list[Path]]:
    """Rows of the relay's ``blobs`` table and the files under its blob directory."""
    with closing(sqlite3.connect(data / "relay.db")) as database:
        [(rows,)] = database.execute("SELECT COUNT(*) FROM blobs").fetchall()
    return rows, sorted(path for path in (data / "blobs").rglob("*") if path.is_file())


async def test_a_file_sent_to_a_group_is_stored_once_and_saved_by_every_member(
        tmp_path: Path) -> None:
    data = tmp_path / "D"
    await declare(data, ALICE, BOB, CAROL)
    port = free_udp_port()
    async with trio.open_nursery() as nursery:
        cli = Cli(tmp_path, await start_relay(nursery, data, port), port)
        for name, phone in (("A", ALICE), ("B", BOB), ("C", CAROL)):
            await cli.enrol(name, phone)
        await group(cli, "A", "create", "Crew", BOB, CAROL)
        for name in ("B", "C"):
            assert await cli.receive(name) == []  # the creation, applied
        report = tmp_path / "report.pdf"
        report.write_bytes(os.urandom(150_000))

        sent = await group(cli, "A", "send-file", "Crew", str(report))
        assert sent == {"sent": True, "group": "Crew", "message_id": sent["message_id"],
                        "devices": 2, "keys_sent": 0, "rekeyed": False,
                        "sealed": sent["sealed"], "name": "report.pdf", "size": 150_000}
        rows, files = stored_blobs(data)
        assert (rows, len(files)) == (1, 1)  # one upload for the whole group

        for name in ("B", "C"):
            downloads = tmp_path / f"downloads-{name}"
            downloads.mkdir()
            [line] = await receive_into(cli, name, downloads)
            assert (line["group"], line["from"], line["name"], line["size"],
                    line["media_type"]) == ("Crew", ALICE, "report.pdf", 150_000,
                                            "application/pdf")
            assert "error" not in line and "to" not in line
            saved = Path(str(line["file"]))
            assert saved == downloads / "report.pdf"
            assert saved.read_bytes() == report.read_bytes()
            assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        assert stored_blobs(data)[0] == 1  # still one blob, fetched twice

        await group(cli, "B", "send-file", "Crew", str(report))  # without --download-dir
        [line] = await receive_into(cli, "C", None)
        assert (line["group"], line["from"], line["name"], line["size"]) == (
            "Crew", BOB, "report.pdf", 150_000)
        assert "file" not in line and "error" not in line

        for words, problem in (
                (("Nope", str(report)), "no group named 'Nope'"),
                (("Crew", str(tmp_path / "missing.bin")), "missing.bin"),
                (("Crew", str(tmp_path)), "is not a regular file")):
            refusal = await cli.refused("--profile", cli.profile("A"), "group", "send-file",
                                        *words)
            assert refusal.startswith("error: ") and problem in refusal, refusal
            assert len(refusal.splitlines()) == 1, refusal
        assert await receive_into(cli, "B", None) == []  # nothing was announced
        assert stored_blobs(data)[0] == 2  # A's one and B's one: nothing uploaded since
        cli.relay.process.terminate()
        with trio.fail_after(10):
            await cli.relay.process.wait()
        nursery.cancel_scope.cancel()


async def test_a_member_whose_safety_number_changed_stops_a_file_before_its_upload(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice = await enrolled_profile(relay, tmp_path / "A", ALICE)
    await enrolled_profile(relay, tmp_path / "B", BOB)
    await enrolled_profile(relay, tmp_path / "C", CAROL)
    await start_group(alice, "Crew", [BOB, CAROL])
    await enrolled_profile(relay, tmp_path / "C2", CAROL)  # a new identity on Carol's number
    report = tmp_path / "report.pdf"
    report.write_bytes(os.urandom(10_000))
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(alice) as messenger:
            with pytest.raises(IdentityChangedError):  # the relay's answer tells of the change
                await send_group_text(messenger, "Crew", "still there?")
            with pytest.raises(IdentityChangedError):  # known now: refused before the upload
                await send_group_file(messenger, "Crew", report)
    assert stored_blobs(relay.data_dir) == (0, [])  # nothing uploaded
