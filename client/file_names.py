"""The names of files: what a sender announces, and what a receiver may create.

A received name is the sender's choice, so it is never used as a path as it is
(`safe_file_name`), and an existing file is never replaced (`numbered_names`).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from pathlib import Path

from client.message_content import MAX_FILE_NAME_BYTES

__all__ = ["FALLBACK_NAME", "MAX_NAME_SUFFIXES", "announced_name", "numbered_names",
           "safe_file_name"]

MAX_NAME_SUFFIXES = 1000
"""Names tried when a received file's name exists: ``name (1).ext`` to ``name (999).ext``."""
FALLBACK_NAME = "file"
"""A received file's name when nothing of the sender's is left once made safe."""
_MAX_EXTENSION_BYTES = 16  # a longer "extension" is part of the name, cut like the rest


def announced_name(path: Path) -> str:
    """The name a sent file is announced under: the file's own, as valid UTF-8 within
    MAX_FILE_NAME_BYTES (bytes that are not UTF-8 become U+FFFD). The receiver makes it
    safe (`safe_file_name`): the sender's is what the user named the file."""
    name = path.name.encode(errors="surrogateescape").decode(errors="replace")
    return _shorten(name, MAX_FILE_NAME_BYTES) or FALLBACK_NAME


def safe_file_name(name: str) -> str:
    """A name that is safe to create in the download directory: the last component of any
    path (``/`` or ``\\``), without control or format characters, leading dots (no hidden
    file, no ``..``) or trailing dots and spaces, at most MAX_FILE_NAME_BYTES bytes (the
    extension kept), and ``file`` if nothing is left."""
    name = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(character for character in name
                   if unicodedata.category(character)[0] != "C"
                   and unicodedata.category(character) not in ("Zl", "Zp"))
    name = name.strip().lstrip(".").rstrip(". ")
    if not name:
        return FALLBACK_NAME
    return _shorten(name, MAX_FILE_NAME_BYTES)


def _shorten(name: str, limit: int) -> str:
    """``name`` cut to ``limit`` UTF-8 bytes, from the stem, keeping a short extension."""
    if len(name.encode()) <= limit:
        return name
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem or len(extension.encode()) > _MAX_EXTENSION_BYTES:
        stem, extension = name, ""
    suffix = f".{extension}" if extension else ""
    room = limit - len(suffix.encode())
    return stem.encode()[:room].decode(errors="ignore").rstrip(". ") + suffix


def numbered_names(name: str) -> Iterator[str]:
    """``name``, then ``stem (1).ext``, ``stem (2).ext``, ... within the name limit: the
    names a received file may take, in order, MAX_NAME_SUFFIXES in all."""
    yield name
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem:
        stem, extension = name, ""
    suffix = f".{extension}" if extension else ""
    for number in range(1, MAX_NAME_SUFFIXES):
        tag = f" ({number}){suffix}"
        yield _shorten(stem, MAX_FILE_NAME_BYTES - len(tag.encode())) + tag
