"""Files end to end: encrypt while reading and upload, download and decrypt while writing.

A file's bytes never sit whole in memory: the sender reads ``READ_SIZE`` bytes at a time,
seals them (`crypto.attachments`) and streams the ciphertext to the relay's blob; the
receiver decrypts what it downloads into a private temporary file (mode 0600, beside the
destination) and moves it into place only once the last chunk, the digest and the size have
passed. The message that announces the file (key, digest, size, name, blob id) goes through
the usual end-to-end send path (`client.messenger`); docs/FILES.md describes it for users.

Resuming an upload: before the first byte leaves, a resume record (blob id, key, and the
file's size and modification time) is written to the profile, mode 0600, under
``uploads/``. A later ``send_file`` of the same file to the same number asks the relay what
it holds (BLOB_STATUS) and uploads from there: the encryption is deterministic per key, so
the ciphertext is regenerated from the file (the part already uploaded is encrypted again
to bring the digest up to date, and not sent). A file changed since then starts over with a
new key and blob. The record goes once the message has been sent.

Resuming a download: the temporary file keeps the plaintext of the chunks already checked;
a later attempt seals them again to bring the digest up to date and downloads the rest from
that offset. A blob that fails its checks is refused (`FileRefused`) and nothing is saved.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import unicodedata
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import msgpack
import trio

from client.errors import RelayError
from client.message_content import MAX_FILE_NAME_BYTES, MAX_FILE_SIZE, FileMessage
from client.profile_files import write_private
from crypto.attachments import (
    DEFAULT_CHUNK_SIZE,
    AttachmentDecryptor,
    AttachmentEncryptor,
    AttachmentError,
    ciphertext_size,
    new_attachment_key,
)
from crypto.primitives import SystemRandom
from wire.frames import ErrorCode, RemoteProtocolError

__all__ = ["MAX_NAME_SUFFIXES", "MAX_UPLOAD_ATTEMPTS", "READ_SIZE", "BlobClient",
           "FileRefused", "FileUnreadable", "TransferProgress", "UploadedFile",
           "announced_name", "download_file", "forget_upload", "numbered_names",
           "safe_file_name", "upload_file"]

READ_SIZE = 1024 * 1024
"""File bytes read (or ciphertext bytes written) per step: what a transfer holds at once,
besides one chunk; large enough that the thread hop per read costs little."""
MAX_UPLOAD_ATTEMPTS = 3
"""Uploads tried in one `upload_file` when the relay says the offset is not the one it
holds (BLOB_OFFSET_MISMATCH: an earlier attempt's bytes landed after all): each attempt asks
BLOB_STATUS first, so one retry is the normal case; more means something else is wrong."""
MAX_NAME_SUFFIXES = 1000
"""Names tried when a received file's name exists: ``name (1).ext`` to ``name (999).ext``."""
UPLOADS_DIRECTORY = "uploads"  # in the profile: the resume records, 0600
_RECORD_VERSION = 1
_PART_PREFIX = ".cryptopass-"  # temporary files start with a dot: sanitised names never do
_PART_SUFFIX = ".part"
_FALLBACK_NAME = "file"

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


class FileRefused(Exception):
    """A received file cannot be had: it failed its checks (altered, cut, not the announced
    digest or size) or the relay no longer holds it. Nothing was saved; trying again will not
    help."""


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


# -- receiving -----------------------------------------------------------------------------


def announced_name(path: Path) -> str:
    """The name a sent file is announced under: the file's own, as valid UTF-8 within
    MAX_FILE_NAME_BYTES (bytes that are not UTF-8 become U+FFFD). The receiver makes it
    safe (`safe_file_name`): the sender's is what the user named the file."""
    name = path.name.encode(errors="surrogateescape").decode(errors="replace")
    return _shorten(name, MAX_FILE_NAME_BYTES) or _FALLBACK_NAME


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
        return _FALLBACK_NAME
    return _shorten(name, MAX_FILE_NAME_BYTES)


def _shorten(name: str, limit: int) -> str:
    """``name`` cut to ``limit`` UTF-8 bytes, from the stem, keeping a short extension."""
    if len(name.encode()) <= limit:
        return name
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem or len(extension.encode()) > 16:
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


class _PartFile:
    """The private temporary file a download decrypts into (mode 0600, in the destination
    directory, so that moving it into place is a rename on one file system)."""

    def __init__(self, directory: Path, blob_id: bytes) -> None:
        # Named from a hash of the blob id: the id itself is a capability, the name is not.
        tag = hashlib.sha256(b"cryptopass part\0" + blob_id).hexdigest()[:32]
        self.path = directory / f"{_PART_PREFIX}{tag}{_PART_SUFFIX}"
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o600)
        try:
            status = os.fstat(descriptor)
            if not stat.S_ISREG(status.st_mode) or status.st_uid != os.getuid():
                raise FileRefused(f"{self.path} is not a file of this user; remove it")
            os.fchmod(descriptor, 0o600)
        except BaseException:
            os.close(descriptor)
            raise
        self._file = os.fdopen(descriptor, "r+b")

    def saved(self) -> Iterator[bytes]:
        """The plaintext an earlier attempt saved, from the start."""
        self._file.seek(0)
        while piece := self._file.read(READ_SIZE):
            yield piece

    def keep(self, size: int) -> None:
        """Keep the first ``size`` bytes and write after them."""
        self._file.truncate(size)
        self._file.seek(size)

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def publish(self, name: str) -> Path:
        """Make the whole file durable and give it ``name`` (or ``name (N)`` when taken);
        an existing file is never replaced."""
        self._file.flush()
        os.fsync(self._file.fileno())
        for candidate in numbered_names(name):
            target = self.path.parent / candidate
            try:
                os.link(self.path, target)  # fails on an existing name, unlike rename
            except FileExistsError:
                continue
            self.discard()
            _fsync_directory(self.path.parent)  # the name is durable before the message
            return target                       # is acknowledged
        raise FileExistsError(f"{name} and {MAX_NAME_SUFFIXES - 1} numbered variants exist "
                              f"in {self.path.parent}")

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        self._file.close()


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


async def download_file(client: BlobClient, file: FileMessage, directory: Path, *,
                        progress: TransferProgress | None = None) -> Path:
    """Download, decrypt and check the announced file, then save it in ``directory`` under
    its sanitised name (numbered if taken), mode 0600; return where it went. An interrupted
    download resumes from the plaintext saved so far.

    Raises:
        FileRefused: it failed a check, or the relay no longer holds it; nothing was saved.
        ConnectionClosed, RelayError, OSError: try again later (the part saved is kept).
    """
    name = safe_file_name(file.name)
    if not await trio.Path(directory).is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "the download directory is not a directory",
                                 str(directory))
    for attempt in range(2):  # a second time from zero if the part saved was spoilt
        part = await trio.to_thread.run_sync(_PartFile, directory, file.blob_id)
        kept = 0
        try:
            decryptor = AttachmentDecryptor(file.key, digest=file.digest,
                                            chunk_size=file.chunk_size,
                                            plaintext_size=file.size)
            kept = await trio.to_thread.run_sync(decryptor.resume, part.saved())
            await trio.to_thread.run_sync(part.keep, kept)
            await _receive(client, file, decryptor, part, name, progress)
        except AttachmentError as error:
            await trio.to_thread.run_sync(part.discard)
            if kept and attempt == 0:
                continue  # the part saved may be what spoilt it: once more, from zero
            raise FileRefused(f"{name} was refused and not saved: {error}") from None
        except RelayError as error:
            if error.code == ErrorCode.INVALID_REQUEST:  # our offset is past the blob's end
                await trio.to_thread.run_sync(part.discard)
                raise FileRefused(f"{name} was refused and not saved: the relay's blob is "
                                  f"shorter than the announced file") from None
            if error.code != ErrorCode.BLOB_UNKNOWN:
                await trio.to_thread.run_sync(part.close)
                raise
            await trio.to_thread.run_sync(part.discard)
            raise FileRefused(f"{name} is no longer on the relay (expired or deleted); "
                              f"ask the sender to send it again") from None
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(part.close)
            raise
        return await trio.to_thread.run_sync(part.publish, name)
    raise AssertionError("unreachable: the second attempt returns or raises")


async def _receive(client: BlobClient, file: FileMessage, decryptor: AttachmentDecryptor,
                   part: _PartFile, name: str, progress: TransferProgress | None) -> None:
    offset = decryptor.ciphertext_offset
    expected = file.ciphertext_size
    async with client.download_blob(file.blob_id, offset) as (size, pieces):
        if size != expected:
            raise AttachmentError(f"the relay's blob has {size} bytes, not the announced "
                                  f"{expected}")
        done = offset
        pending = bytearray()
        async for piece in pieces:
            pending += decryptor.feed(piece)
            done += len(piece)
            if len(pending) >= READ_SIZE:
                await trio.to_thread.run_sync(part.write, bytes(pending))
                pending.clear()
            if progress is not None:
                progress(name, done, expected)
    pending += decryptor.finish()
    await trio.to_thread.run_sync(part.write, bytes(pending))
