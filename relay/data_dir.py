"""One relay per data directory: an exclusive lock on ``DATA_DIR/relay.lock``.

``serve`` takes the lock before it touches anything in the directory and holds it
for its life; ``restore`` takes it while it replaces the store. Whoever cannot take
it at once is refused (``DataDirectoryInUse``) and leaves the directory as it found
it: it never writes the lock file, the control socket or the store.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on the open lock file, so the kernel lets
go of it when the last process holding it exits, however it exits: there is no
stale lock to clean up after a SIGKILL. The lock file itself stays (removing it
would let two processes lock two different files of the same name).

The holder writes ``PID PURPOSE`` into the file, for the message a refused process
prints; correctness never depends on it (a PID may be stale or reused).

With ``serve --workers N`` the supervisor takes the lock and hands the locked
descriptor to its workers (relay/supervisor.py): they hold the same lock, not one
of their own, so the directory stays in use until the last of them is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

__all__ = ["DATA_DIR_MODE", "DATA_FILE_MODE", "LOCK_FILE_NAME", "PRIVATE_UMASK", "DataDirLock",
           "DataDirectoryInUse", "inherit_data_dir_lock", "lock_data_dir"]

LOCK_FILE_NAME = "relay.lock"

DATA_DIR_MODE = 0o700
"""The data directory: its owner only. It holds the store (with the code hashes), the
enrolment secret's file by default (kept apart from the store: relay/enrolment_secret.py), the
TLS key, the SMS outbox and the control socket."""
DATA_FILE_MODE = 0o600
"""Every file in it, backups included."""
PRIVATE_UMASK = 0o077
"""The relay's commands create files for their owner only (relay/cli.py sets it)."""

MAX_HOLDER_LINE = 128
"""Bytes of the lock file read for a refusal message: ``PID PURPOSE``."""

PURPOSES = {"serve": "a relay", "restore": "a restore"}
"""What may hold the lock, and how a refusal names it."""


class DataDirectoryInUse(Exception):
    """Another process holds the data directory's lock; nothing was changed."""

    def __init__(self, data_dir: Path, *, pid: int | None, purpose: str | None) -> None:
        self.data_dir = data_dir
        self.pid = pid
        self.purpose = purpose
        holder = PURPOSES.get(purpose or "", "another process")
        if pid is not None:
            holder += f" (pid {pid})"
        super().__init__(f"the data directory {data_dir} is in use by {holder}")


class DataDirLock:
    """The data directory's lock, held while this object is open."""

    def __init__(self, data_dir: Path, descriptor: int) -> None:
        self.data_dir = data_dir
        self._descriptor: int | None = descriptor

    @property
    def held(self) -> bool:
        """Whether this process still holds the lock (it was not released)."""
        return self._descriptor is not None

    @property
    def descriptor(self) -> int:
        """The locked file's descriptor (to hand to worker processes)."""
        if self._descriptor is None:
            raise ValueError("the data directory lock was released")
        return self._descriptor

    def release(self) -> None:
        """Close this process's descriptor of the lock.

        Never ``LOCK_UN``: that would release the lock for every process sharing it
        (a supervisor's workers); the kernel lets go once the last descriptor closes.
        """
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()


def lock_data_dir(data_dir: Path, *, purpose: str) -> DataDirLock:
    """Create ``data_dir`` if need be and take its lock, or fail at once.

    Args:
        purpose: ``serve`` or ``restore``: written into the lock file with this PID.

    Raises:
        DataDirectoryInUse: another process holds it (the lock file is left untouched).
        OSError: the directory or the lock file cannot be created or opened.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}")
    data_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(data_dir / LOCK_FILE_NAME,
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, holder_purpose = _holder(descriptor)
            raise DataDirectoryInUse(data_dir, pid=pid, purpose=holder_purpose) from None
        os.fchmod(descriptor, DATA_FILE_MODE)
        _make_private(data_dir)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()} {purpose}\n".encode(), 0)
    except BaseException:
        os.close(descriptor)
        raise
    return DataDirLock(data_dir, descriptor)


def _make_private(data_dir: Path) -> None:
    """Take away what a data directory made by an older version (or by hand) lets others read:
    the directory becomes DATA_DIR_MODE and the files directly in it DATA_FILE_MODE."""
    os.chmod(data_dir, DATA_DIR_MODE)  # first: nobody else can now swap what follows
    with os.scandir(data_dir) as entries:
        for entry in entries:
            readable = entry.stat(follow_symlinks=False).st_mode & 0o077
            if entry.is_file(follow_symlinks=False) and readable:
                os.chmod(entry.path, DATA_FILE_MODE)


def inherit_data_dir_lock(data_dir: Path, descriptor: int) -> DataDirLock:
    """Adopt the lock a parent process took and passed down as ``descriptor``.

    A worker of ``serve --workers N`` holds its supervisor's lock this way. Taking
    ``flock`` again on the inherited descriptor succeeds (it is the same lock, not a
    second one) and proves that it is held.

    Raises:
        ValueError: ``descriptor`` is not ``data_dir``'s lock file.
        DataDirectoryInUse: it is, but another process holds the lock.
    """
    opened, named = os.fstat(descriptor), os.stat(data_dir / LOCK_FILE_NAME)
    if (opened.st_dev, opened.st_ino) != (named.st_dev, named.st_ino):
        raise ValueError(f"descriptor {descriptor} is not {data_dir / LOCK_FILE_NAME}")
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid, purpose = _holder(descriptor)
        raise DataDirectoryInUse(data_dir, pid=pid, purpose=purpose) from None
    return DataDirLock(data_dir, descriptor)


def _holder(descriptor: int) -> tuple[int | None, str | None]:
    """The PID and purpose the holder wrote, if they can be read (informative only)."""
    with contextlib.suppress(OSError):
        words = os.pread(descriptor, MAX_HOLDER_LINE, 0).decode(errors="replace").split()
        if len(words) == 2 and words[0].isdigit():  # PID and purpose
            return int(words[0]), words[1]
    return None, None
