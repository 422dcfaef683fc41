"""A file message's content and the names a received file may take, without a relay."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.file_names import (
    MAX_NAME_SUFFIXES,
    announced_name,
    numbered_names,
    safe_file_name,
)
from client.message_content import (
    MAX_FILE_NAME_BYTES,
    MAX_FILE_SIZE,
    ContentError,
    FileMessage,
    decode_content,
    encode_file_content,
)
from crypto.attachments import ciphertext_size

SENT_AT = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
FIELDS: dict[str, Any] = {
    "sender_phone": "+33612345678", "recipient_phone": "+33698765432", "sent_at": SENT_AT,
    "blob_id": b"B" * 32, "key": b"K" * 32, "digest": b"D" * 32, "size": 1_000_000,
    "chunk_size": 65536, "name": "report.pdf", "media_type": "application/pdf"}


def test_a_file_message_round_trips_and_hides_its_secrets_from_repr() -> None:
    message = decode_content(encode_file_content(**FIELDS))
    assert isinstance(message, FileMessage)
    assert (message.blob_id, message.key, message.digest) == (b"B" * 32, b"K" * 32, b"D" * 32)
    assert (message.size, message.chunk_size, message.name, message.media_type) == (
        1_000_000, 65536, "report.pdf", "application/pdf")
    assert message.sent_at == "2026-01-02T03:04:05.000+00:00"
    assert message.ciphertext_size == ciphertext_size(1_000_000, 65536)
    assert "KKKK" not in repr(message) and "BBBB" not in repr(message)
    no_type = decode_content(encode_file_content(**(FIELDS | {"media_type": None})))
    assert isinstance(no_type, FileMessage) and no_type.media_type is None


def _packed(**changes: object) -> bytes:
    value = {"v": 1, "kind": "file", "from": "+1", "to": "+2", "sent_at": "t",
             "blob": b"B" * 32, "key": b"K" * 32, "digest": b"D" * 32, "size": 10,
             "chunk": 16, "name": "a", "type": None} | changes
    return msgpack.packb({name: field for name, field in value.items() if field is not ...})


@pytest.mark.parametrize("changes", [
    {"blob": b"short"}, {"blob": b"x" * 65}, {"blob": "text"}, {"blob": ...},
    {"key": b"K" * 31}, {"key": b"K" * 33}, {"digest": b"D" * 16}, {"digest": ...},
    {"size": -1}, {"size": MAX_FILE_SIZE + 1}, {"size": True}, {"size": "10"},
    {"chunk": 0}, {"chunk": 1024 * 1024 + 1}, {"chunk": ...},
    {"name": ...}, {"name": b"bytes"}, {"name": "é" * 200}, {"type": 3}, {"type": "x" * 200},
    {"from": ...}, {"sent_at": 5},
], ids=repr)
def test_a_file_message_out_of_its_limits_is_refused(changes: dict[str, object]) -> None:
    assert isinstance(decode_content(_packed()), FileMessage)
    with pytest.raises(ContentError):
        decode_content(_packed(**changes))


def test_the_sender_cannot_build_a_message_out_of_the_limits() -> None:
    with pytest.raises(ValueError, match="name"):
        encode_file_content(**(FIELDS | {"name": "x" * (MAX_FILE_NAME_BYTES + 1)}))
    with pytest.raises(ValueError, match="key"):
        encode_file_content(**(FIELDS | {"key": b"short"}))


@pytest.mark.parametrize(("given_name", "safe"), [
    ("report.pdf", "report.pdf"),
    ("../../.ssh/authorized_keys", "authorized_keys"),
    ("/etc/passwd", "passwd"),
    ("..\\..\\Windows\\evil.dll", "evil.dll"),
    ("..", "file"), (".", "file"), ("", "file"), ("///", "file"),
    (".bashrc", "bashrc"), ("...hidden", "hidden"),
    ("bad\x00name\x1b[31m.txt", "badname[31m.txt"),
    ("line\nbreak\u2028.txt", "linebreak.txt"),
    ("right\u202eto-left.exe", "rightto-left.exe"),
    ("trailing. . ", "trailing"),
    ("  spaced  .txt", "spaced  .txt"),
    ("caf\u0065\u0301.txt", "café.txt"),
])
def test_received_names_are_sanitised(given_name: str, safe: str) -> None:
    assert safe_file_name(given_name) == safe


def test_a_long_name_is_cut_to_the_limit_keeping_its_extension() -> None:
    name = safe_file_name("é" * 300 + ".tar")
    assert len(name.encode()) <= MAX_FILE_NAME_BYTES
    assert name.endswith("é.tar")


@given(st.text(max_size=400))
def test_any_name_becomes_one_plain_component(name: str) -> None:
    safe = safe_file_name(name)
    assert safe and "/" not in safe and "\\" not in safe and "\x00" not in safe
    assert not safe.startswith(".")
    assert len(safe.encode()) <= MAX_FILE_NAME_BYTES
    assert Path(safe).name == safe
    assert all(candidate and len(candidate.encode()) <= MAX_FILE_NAME_BYTES
               for candidate in list(numbered_names(safe))[:3])


def test_a_taken_name_gets_a_number_before_its_extension() -> None:
    candidates = list(numbered_names("report.pdf"))
    assert candidates[:3] == ["report.pdf", "report (1).pdf", "report (2).pdf"]
    assert len(candidates) == MAX_NAME_SUFFIXES
    assert list(numbered_names("README"))[:2] == ["README", "README (1)"]


def test_the_sender_announces_the_file_name_as_it_is_within_the_limit() -> None:
    assert announced_name(Path("/tmp/.hidden\x07 name.txt")) == ".hidden\x07 name.txt"
    assert announced_name(Path(b"caf\xe9.txt".decode(errors="surrogateescape"))) == "caf\ufffd.txt"
    assert len(announced_name(Path("\u00e9" * 200 + ".txt")).encode()) <= MAX_FILE_NAME_BYTES
