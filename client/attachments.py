"""Sending a file: encrypt it while reading and upload it, resuming an interrupted upload.

A file's bytes never sit whole in memory: the sender reads ``READ_SIZE`` bytes at a time,
seals them (`crypto.attachments`) and streams the ciphertext to the relay's blob. The message
that announces the file (key, digest, size, name, blob id) then goes through the usual
end-to-end send path (`client.messenger`); receiving is `client.downloads`, and
docs/FILES.md describes both for users.

Resuming an upload: before the first byte leaves, a resume record (blob id, key, and the
file's size and modification time) is written to the profile, mode 0600, under
``uploads/``. A later ``send_file`` of the same file to the same number asks the relay what
it holds (BLOB_STATUS) and uploads from there: the encryption is deterministic per key, so
the ciphertext is regenerated from the file (the part already uploaded is encrypted again
to bring the digest up to date, and not sent). A file changed since then starts over with a
new key and blob. The record goes once the message has been sent.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import msgpack
import trio

from client.errors import RelayError
from client.message_content import MAX_FILE_SIZE
from client.profile_files import write_private
from crypto.attachments import (
    DEFAULT_CHUNK_SIZE,
    AttachmentEncryptor,
    ciphertext_size,
    new_attachment_key,
)
from crypto.primitives import SystemRandom
from wire.frames import ErrorCode, RemoteProtocolError

__all__ = ["MAX_UPLOAD_ATTEMPTS", "READ_SIZE", "BlobClient", "FileUnreadable",
           "TransferProgress", "UploadedFile", "forget_upload", "upload_file"]

READ_SIZE = 1024 * 1024
"""File bytes read (or ciphertext bytes written) per step: what a transfer holds at once,
besides one chunk; large enough that the thread hop per read costs little."""
MAX_UPLOAD_ATTEMPTS = 3
"""Uploads tried in one `upload_file` when the relay says the offset is not the one it
holds (BLOB_OFFSET_MISMATCH: an earlier attempt's bytes landed after all): each attempt asks
BLOB_STATUS first, so one retry is the normal case; more means something else is wrong."""
UPLOADS_DIRECTORY = "uploads"  # in the profile: the resume records, 0600
_RECORD_VERSION = 1

TransferProgress = Callable[[str, int, int], None]
"""Told ``(file name, bytes done, bytes in all)`` as a transfer advances (ciphertext bytes)."""


class BlobClient(Protocol):
    """What a transfer needs of the connection (`client.connection.RelayClient`)."""

    async def create_blob(self, size: int) -> bytes: ...
    async def upload_blob(self, blob_id: bytes, offset: int,
                          chunks: AsyncIterable[bytes]) -> int: ...
    async def blob_status(self, blob_id: bytes) -> tuple[int, int]: ...
    def download_blob(self, blob_id: bytes, offset: int
                      ) -> AbstractAsyncContextManager[tuple[int, AsyncIterator[bytes]]]: ...


class FileUnreadable(Exception):
    """The file to send cannot be sent as it is (not a regular file, too large, or it changed
    while it was read); nothing was announced to anyone."""


@dataclass(frozen=True, kw_only=True)
class UploadedFile:
    """A file the relay now holds, encrypted: what the message announcing it carries."""

    blob_id: bytes
    key: bytes
    digest: bytes
    size: int  #: plaintext bytes
    chunk_size: int
    record: Path  #: the resume record to remove once the message is sent (`forget_upload`)

    def __repr__(self) -> str:  # the key and the blob id are secrets: never in a log line
        return f"UploadedFile(size={self.size})"


# -- sending -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Identity:
    """What tells that a file is still the one a resume record was made for."""

    size: int
    modified_ns: int
    inode: int
    device: int


def _identity(file: BinaryIO) -> _Identity:
    status = os.fstat(file.fileno())
    if not stat.S_ISREG(status.st_mode):
        raise FileUnreadable(f"{file.name} is not a regular file")
    return _Identity(status.st_size, status.st_mtime_ns, status.st_ino, status.st_dev)


def _record_path(records: Path, recipient: str, path: Path) -> Path:
    key = hashlib.sha256(f"{recipient}\0{path}".encode()).hexdigest()[:32]
    return records / UPLOADS_DIRECTORY / f"{key}.upload"


def _read_record(record: Path, identity: _Identity) -> tuple[bytes, bytes, int] | None:
    """The blob id, key and chunk size of a resumable upload of this very file, if any."""
    try:
        value = msgpack.unpackb(record.read_bytes(), raw=False)
    except FileNotFoundError:
        return None
    except (ValueError, msgpack.UnpackException):
        return None  # a damaged record: start over
    if not isinstance(value, dict) or value.get("v") != _RECORD_VERSION:
        return None
    if value.get("file") != [identity.size, identity.modified_ns, identity.inode,
                             identity.device]:
        return None  # the file changed: its earlier ciphertext is not this one's
    blob_id, key, chunk_size = value.get("blob"), value.get("key"), value.get("chunk")
    if not (isinstance(blob_id, bytes) and isinstance(key, bytes)
            and isinstance(chunk_size, int)):
        return None
    return blob_id, key, chunk_size


def _write_record(record: Path, identity: _Identity, blob_id: bytes, key: bytes,
                  chunk_size: int) -> None:
    record.parent.mkdir(mode=0o700, exist_ok=True)
    write_private(record, msgpack.packb({
        "v": _RECORD_VERSION, "blob": blob_id, "key": key, "chunk": chunk_size,
        "file": [identity.size, identity.modified_ns, identity.inode, identity.device]}))


def forget_upload(uploaded: UploadedFile) -> None:
    """Remove the resume record once the message announcing the file has been sent."""
    uploaded.record.unlink(missing_ok=True)


async def upload_file(client: BlobClient, path: Path, *, records: Path, recipient: str,
                      progress: TransferProgress | None = None) -> UploadedFile:
    """Encrypt ``path`` as it is read and upload it, resuming an earlier attempt to send this
    file to ``recipient`` if the relay still holds its start.

    Args:
        records: the profile directory (resume records go under ``uploads/``, mode 0600).

    Raises:
        FileUnreadable: not a regular file, too large, or it changed while it was read.
        OSError: the file cannot be read.
        RelayError: the relay refused (BLOB_TOO_LARGE, BLOB_QUOTA_EXCEEDED, ...).
    """
    if not stat.S_ISREG((await trio.Path(path).stat()).st_mode):  # a FIFO would block open
        raise FileUnreadable(f"{path} is not a regular file")
    file = await trio.to_thread.run_sync(path.open, "rb")
    try:
        identity = _identity(file)
        if identity.size > MAX_FILE_SIZE:
            raise FileUnreadable(f"{path} is larger than {MAX_FILE_SIZE} bytes")
        record = _record_path(records, recipient, Path(await trio.Path(path).resolve()))
        attempts = 0
        while True:
            attempts += 1
            blob_id, key, chunk_size, received = await _resume_or_create(
                client, record, identity)
            encryptor = AttachmentEncryptor(key, chunk_size=chunk_size)
            total = ciphertext_size(identity.size, chunk_size)
            async with aclosing(_sealed(file, encryptor, identity.size, path.name, total,
                                        progress)) as ciphertext:
                try:
                    held = await _upload_from(client, blob_id, received, total, ciphertext)
                except RelayError as error:
                    if (error.code != ErrorCode.BLOB_OFFSET_MISMATCH
                            or attempts >= MAX_UPLOAD_ATTEMPTS):
                        raise
                    continue  # the relay holds more than it said: ask it again
            if held != total and attempts < MAX_UPLOAD_ATTEMPTS:
                continue  # the relay kept less than was sent: resume from what it holds
            if held != total:
                raise RemoteProtocolError(ErrorCode.INTERNAL_ERROR,
                                          f"the relay holds {held} of the file's {total} "
                                          f"bytes after the upload")
            if _identity(file) != identity:
                record.unlink(missing_ok=True)
                raise FileUnreadable(f"{path} changed while it was sent; nothing was "
                                     f"announced: send it again")
            return UploadedFile(blob_id=blob_id, key=key, digest=encryptor.digest,
                                size=identity.size, chunk_size=chunk_size, record=record)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(file.close)


async def _resume_or_create(client: BlobClient, record: Path,
                            identity: _Identity) -> tuple[bytes, bytes, int, int]:
    """The blob to upload into, its key and chunk size, and the bytes the relay holds."""
    resumable = await trio.to_thread.run_sync(_read_record, record, identity)
    if resumable is not None:
        blob_id, key, chunk_size = resumable
        try:
            size, received = await client.blob_status(blob_id)
        except RelayError as error:
            if error.code != ErrorCode.BLOB_UNKNOWN:  # expired or gone: start over
                raise
        else:
            if size == ciphertext_size(identity.size, chunk_size):
                return blob_id, key, chunk_size, received
    key = new_attachment_key(SystemRandom())
    blob_id = await client.create_blob(ciphertext_size(identity.size, DEFAULT_CHUNK_SIZE))
    await trio.to_thread.run_sync(_write_record, record, identity, blob_id, key,
                                  DEFAULT_CHUNK_SIZE)
    return blob_id, key, DEFAULT_CHUNK_SIZE, 0


async def _upload_from(client: BlobClient, blob_id: bytes, received: int, total: int,
                       ciphertext: AsyncIterator[bytes]) -> int:
    """Upload the ciphertext from byte ``received`` (what the relay holds); the bytes before
    are generated too, for the digest, and dropped. Returns what the relay then holds."""
    if received >= total:  # the relay holds it all: only the digest is wanted
        async for _ in ciphertext:
            pass
        return received

    async def remaining() -> AsyncGenerator[bytes, None]:
        skip = received
        async for piece in ciphertext:
            if skip >= len(piece):
                skip -= len(piece)
                continue
            yield piece[skip:]
            skip = 0

    async with aclosing(remaining()) as pieces:
        return await client.upload_blob(blob_id, received, pieces)


async def _sealed(file: BinaryIO, encryptor: AttachmentEncryptor, size: int, name: str,
                  total: int, progress: TransferProgress | None) -> AsyncGenerator[bytes, None]:
    """The file's ciphertext, read and sealed ``READ_SIZE`` bytes at a time from its start."""
    await trio.to_thread.run_sync(file.seek, 0)
    done = 0

    def advance(sealed: bytes) -> bytes:
        nonlocal done
        done += len(sealed)
        if progress is not None:
            progress(name, done, total)
        return sealed

    yield advance(encryptor.start())
    left = size
    while left > 0:
        data = await trio.to_thread.run_sync(file.read, min(READ_SIZE, left))
        if not data:
            raise FileUnreadable(f"{file.name} shrank while it was read; nothing was "
                                 f"announced: send it again")
        left -= len(data)
        sealed = encryptor.update(data)
        if sealed:
            yield advance(sealed)
    yield advance(encryptor.finish())
