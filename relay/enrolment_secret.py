"""The enrolment secret: a file of its own, never in the store.

The secret keys the HMACs of verification codes and of phone numbers (``enrolment.codes``).
Kept beside the code hashes, as earlier versions did (the store's ``secrets`` table), anyone
holding a copy of the database or of a backup could recover a pending code offline in a
fraction of a second and enrol on someone else's number. So the secret lives in a file, 0600,
by default ``DATA_DIR/enrolment.secret`` (setting ``enrolment_secret_file``), which backups of
the store do not contain. The file holds the 32 bytes in hexadecimal, on one line.

What the store keeps instead is the secret's fingerprint (``enrolment.codes.secret_fingerprint``):
every node of a cluster checks that it read the same secret as the others, and a node whose
file differs refuses to start, rather than send codes that no other node can verify.

At start (``load_enrolment_secret``):

- a secret still in the store (an earlier version's) is moved out once: written to the file if
  there is none, then its row deleted; if the file exists, the file wins and the row goes;
- a relay whose store has no fingerprint yet (a new relay, or the first node of a new cluster)
  creates the file, and keeps its fingerprint in the store. Two nodes doing so at once are
  told apart by the store: the one whose fingerprint was kept goes on, the other deletes the
  file it made and refuses to start. No node ever uses a second secret;
- a relay without the file whose store has a fingerprint refuses to start, naming the file: a
  cluster node must be given a copy of the cluster's file (``docs/CLUSTER.md``), a single relay
  its backup. ``cryptopass-relay secret create`` makes the file beforehand, or a new secret
  with ``--replace``.

Losing the secret loses what is keyed with it: pending codes, and the counts per number
(``sms_sends``, guesses). Accounts, devices and queues do not depend on it.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import structlog

from enrolment.codes import SECRET_BYTES, secret_fingerprint
from storage.base import EnrolmentStore

__all__ = [
    "CREATE_COMMAND",
    "ENROLMENT_SECRET_FILE_NAME",
    "LEGACY_SECRET_NAME",
    "SECRET_FILE_MODE",
    "CreatedSecret",
    "EnrolmentSecretError",
    "create_enrolment_secret",
    "enrolment_secret_path",
    "load_enrolment_secret",
    "read_secret_file",
    "write_secret_file",
]

log = structlog.get_logger("relay.enrolment_secret")

ENROLMENT_SECRET_FILE_NAME = "enrolment.secret"  # noqa: S105 (a file name, not a secret)
"""The secret's file in the data directory, unless ``enrolment_secret_file`` names another."""

LEGACY_SECRET_NAME = "enrolment"  # noqa: S105 (the name of a secret, not one)
"""The name under which earlier versions kept the secret in the store's ``secrets`` table; its
fingerprint is kept under the same name in ``secret_fingerprints``."""

SECRET_FILE_MODE = 0o600
"""The file is its owner's only."""

CREATE_COMMAND = "cryptopass-relay secret create"
"""What the operator runs to create the file (or to move an earlier version's secret out)."""

_MAX_FILE_BYTES = 2 * SECRET_BYTES + 2
"""Hexadecimal digits and a line end: anything longer is not a secret file."""


class EnrolmentSecretError(Exception):
    """The enrolment secret is missing, unreadable or not the cluster's; nothing started.
    The message names the file and what to do."""


@dataclass(frozen=True, slots=True)
class CreatedSecret:
    """What ``create_enrolment_secret`` did."""

    path: Path
    moved_from_store: bool
    """The secret is an earlier version's, moved out of the store (else a new one)."""


def enrolment_secret_path(data_dir: Path, configured: Path | None) -> Path:
    """The secret's file: ``configured`` (setting ``enrolment_secret_file``) if set, else
    ``DATA_DIR/enrolment.secret``."""
    return configured if configured is not None else data_dir / ENROLMENT_SECRET_FILE_NAME


def read_secret_file(path: Path) -> bytes | None:
    """The secret in ``path``; None if there is no such file.

    A symbolic link is followed (secret managers mount files that way: a Kubernetes Secret's
    files are links); only writes refuse to go through one.

    Raises:
        EnrolmentSecretError: the path is not a regular file, cannot be read, or does not
            hold 64 hexadecimal digits.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise EnrolmentSecretError(
            f"cannot read the enrolment secret {path}: {error.strerror or error}") from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise EnrolmentSecretError(f"the enrolment secret {path} is not a regular file")
        data = os.read(descriptor, _MAX_FILE_BYTES + 1)
    finally:
        os.close(descriptor)
    if status.st_mode & 0o077:
        # Not refused: a secret mounted by an orchestrator may be group-readable by design.
        log.warning("enrolment_secret_readable_by_others", path=str(path),
                    mode=oct(stat.S_IMODE(status.st_mode)))
    try:
        secret = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        secret = b""
    if len(secret) != SECRET_BYTES:
        raise EnrolmentSecretError(
            f"the enrolment secret {path} does not hold {SECRET_BYTES} bytes in hexadecimal "
            f"({2 * SECRET_BYTES} digits on one line)")
    return secret


def write_secret_file(path: Path, secret: bytes, *, replace: bool = False) -> bool:
    """Write ``secret`` to ``path``, mode 0600, durably; the file appears whole or not at all.

    The content goes to a new temporary file beside it (``O_EXCL | O_NOFOLLOW``: nothing
    planted there is written through), then is linked under the name, which fails if the name
    exists, or renamed over it if ``replace``. Returns False (and writes nothing) if the file
    exists and ``replace`` is false.
    """
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"an enrolment secret has {SECRET_BYTES} bytes")
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    descriptor = os.open(temporary, flags, SECRET_FILE_MODE)
    try:
        try:
            os.fchmod(descriptor, SECRET_FILE_MODE)  # whatever the umask
            os.write(descriptor, secret.hex().encode("ascii") + b"\n")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        if replace:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)
            except FileExistsError:
                return False
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_directory(path.parent)
    return True


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


async def load_enrolment_secret(store: EnrolmentStore, path: Path, *, cluster: bool) -> bytes:
    """The relay's enrolment secret, from ``path``; see the module's docstring for what
    happens when it is missing, and for the move out of the store.

    Args:
        cluster: the store is shared by several nodes (PostgreSQL): only says what to do in
            the messages (a cluster's nodes copy one file).

    Raises:
        EnrolmentSecretError: no secret can be had safely, or it is not the one the store
            was used with; the message says what to do.
    """
    secret = read_secret_file(path)
    legacy = await store.legacy_secret(LEGACY_SECRET_NAME)
    created = False
    if secret is None and legacy is not None:
        secret = _write_or_read(path, legacy)
    elif secret is None:
        if await store.secret_fingerprint(LEGACY_SECRET_NAME) is not None:
            raise EnrolmentSecretError(_missing(path, cluster=cluster))
        candidate = secrets.token_bytes(SECRET_BYTES)
        secret = _write_or_read(path, candidate)
        created = secret == candidate
    fingerprint = secret_fingerprint(secret)
    if await store.keep_secret_fingerprint(LEGACY_SECRET_NAME, fingerprint) != fingerprint:
        if created:  # another node made the store's secret meanwhile: leave nothing behind
            _remove(path)
            raise EnrolmentSecretError(_missing(path, cluster=cluster))
        raise EnrolmentSecretError(
            f"the enrolment secret {path} is not the one this store was used with"
            + (" (the other nodes of the cluster read another): copy the file from a node "
               "that works" if cluster else ": restore the file from your backup")
            + f", or, to start again with a new secret (pending codes are lost, and the "
              f"limits per number start again), run `{CREATE_COMMAND} --replace`")
    if created:
        log.info("enrolment_secret_created", path=str(path))
    if legacy is not None:
        if legacy != secret:  # an older relay wrote another since: the file wins
            log.warning("enrolment_secret_in_store_differs", path=str(path))
        await store.forget_legacy_secret(LEGACY_SECRET_NAME)
        log.info("enrolment_secret_moved_out_of_store", path=str(path))
    return secret


def _missing(path: Path, *, cluster: bool) -> str:
    """Why a relay without its secret's file refuses, when the store was used with one."""
    if cluster:
        return (f"no enrolment secret at {path}, and the cluster has one: every node must "
                f"read the same. Copy the file from another node (or set "
                f"enrolment_secret_file to where it is); see docs/CLUSTER.md")
    return (f"no enrolment secret at {path}, but this store was used with one: restore the "
            f"file from your backup, or, to start again with a new secret (pending codes are "
            f"lost, and the limits per number start again), run `{CREATE_COMMAND} --replace`")


async def create_enrolment_secret(store: EnrolmentStore, path: Path, *,
                                  replace: bool = False) -> CreatedSecret:
    """Create the secret's file once, for a new relay or cluster (``secret create``).

    A secret an earlier version kept in the store is moved out to the file rather than a new
    one made. ``replace`` makes a new secret even if the file exists or the store was used
    with another one: pending codes are lost and the limits per number start again.

    Raises:
        EnrolmentSecretError: without ``replace``, the file exists, or the store shows that
            it was used with a secret that the file would not be.
    """
    legacy = await store.legacy_secret(LEGACY_SECRET_NAME)
    if replace:
        secret = secrets.token_bytes(SECRET_BYTES)
        write_secret_file(path, secret, replace=True)
        await store.keep_secret_fingerprint(LEGACY_SECRET_NAME, secret_fingerprint(secret),
                                            replace=True)
        if legacy is not None:
            await store.forget_legacy_secret(LEGACY_SECRET_NAME)
        return CreatedSecret(path=path, moved_from_store=False)
    if read_secret_file(path) is not None:
        raise EnrolmentSecretError(
            f"{path} exists already; copy it to the nodes that need it (`--replace` makes a "
            "new secret: pending codes are lost, and the limits per number start again)")
    if legacy is None and await store.secret_fingerprint(LEGACY_SECRET_NAME) is not None:
        raise EnrolmentSecretError(
            "this store was used with an enrolment secret already: copy its file from a node "
            "that has it, or restore it from your backup (`--replace` makes a new secret: "
            "pending codes are lost, and the limits per number start again)")
    candidate = legacy if legacy is not None else secrets.token_bytes(SECRET_BYTES)
    secret = _write_or_read(path, candidate)
    fingerprint = secret_fingerprint(secret)
    if await store.keep_secret_fingerprint(LEGACY_SECRET_NAME, fingerprint) != fingerprint:
        if secret == candidate:
            _remove(path)
        raise EnrolmentSecretError(
            "another enrolment secret was created for this store meanwhile: copy its file "
            "from the node that has it")
    if legacy is not None:
        await store.forget_legacy_secret(LEGACY_SECRET_NAME)
    return CreatedSecret(path=path, moved_from_store=legacy is not None)


def _remove(path: Path) -> None:
    """Delete the file this process made, once it turned out not to be the store's secret."""
    path.unlink(missing_ok=True)


def _write_or_read(path: Path, secret: bytes) -> bytes:
    """``secret``, written to ``path``; or the secret in ``path`` if one appeared meanwhile."""
    try:
        if write_secret_file(path, secret):
            return secret
    except OSError as error:
        raise EnrolmentSecretError(
            f"cannot write the enrolment secret {path}: {error.strerror or error}") from None
    written = read_secret_file(path)
    if written is None:
        raise EnrolmentSecretError(f"the enrolment secret {path} vanished while it was written")
    return written
