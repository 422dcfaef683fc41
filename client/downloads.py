"""Receiving a file: download, decrypt and check it, then save it under a safe name.

The receiver decrypts what it downloads into a private temporary file (mode 0600, beside the
destination, named from a hash of the blob id) and moves it into place only once the last
chunk, the digest and the size have passed (`crypto.attachments`); an existing file is never
replaced. An interrupted download resumes: the temporary file keeps the plaintext of the
chunks already checked, which are sealed again to bring the digest up to date, and the rest
is downloaded from that offset. A blob that fails its checks is refused (`FileRefused`) and
nothing is saved. docs/FILES.md describes it for users.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import trio

from client.attachments import READ_SIZE, BlobClient, TransferProgress
from client.errors import RelayError
from client.file_names import MAX_NAME_SUFFIXES, numbered_names, safe_file_name
from client.message_content import FileMessage
from crypto.attachments import AttachmentDecryptor, AttachmentError
from wire.frames import ErrorCode

__all__ = ["FileRefused", "download_file"]

_PART_PREFIX = ".cryptopass-"  # temporary files start with a dot: sanitised names never do
_PART_SUFFIX = ".part"


class FileRefused(Exception):
    """A received file cannot be had: it failed its checks (altered, cut, not the announced
    digest or size) or the relay no longer holds it. Nothing was saved; trying again will not
    help."""


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
