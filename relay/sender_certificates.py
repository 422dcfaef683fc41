"""The relay's sender-certificate keys: files of their own, rotated with overlap.

A sender certificate (``crypto.sender_certificate``) is the relay's signed statement of who a
device is; the sender seals it inside its envelopes so that the recipient, not the relay, learns
the sender. The relay signs with an Ed25519 key kept in ``DATA_DIR/sender-cert-keys/`` (mode
0700), one file per key, ``key-<id>.json`` (mode 0600), holding the key id, the 32-byte seed in
hexadecimal, and when the key was retired (null while it signs). Backups of the store never
hold these keys.

Rotation with overlap (``cryptopass-relay sender-keys rotate``): the signing key is marked
retired and a new key, the next id, signs from then on. A retired key is still published, and
accepted by clients, until ``not_after_ms`` = its retirement + ``CERTIFICATE_LIFETIME_MS``, when
the last certificate it signed has expired; then it is dropped (and its file removed by the next
rotation). A running relay reads the directory again every ``RELOAD_INTERVAL_MS``, so a rotation
reaches it without a restart.

A cluster's nodes must read the same keys, like the enrolment secret: copy the directory to each
node (or mount it), and run the rotation on one node and copy again (docs/CLUSTER.md). A node
that finds no key creates the first one; ``doctor`` checks the files' modes.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import structlog

from crypto.primitives import ed25519_keypair_from_private
from crypto.sender_certificate import issue_sender_certificate

__all__ = [
    "CERTIFICATE_LIFETIME_MS",
    "KEY_DIRECTORY_NAME",
    "KEY_FILE_MODE",
    "RELOAD_INTERVAL_MS",
    "SenderCertificateKey",
    "SenderKeyError",
    "SenderKeyring",
    "load_keyring",
    "rotate_keys",
    "sender_key_directory",
]

log = structlog.get_logger("relay.sender_certificates")

CERTIFICATE_LIFETIME_MS = 24 * 60 * 60 * 1000
"""How long a sender certificate is valid (a day): clients renew it before; a stolen one is good
for a day at most. Also the overlap a retired key keeps after a rotation."""
RELOAD_INTERVAL_MS = 60 * 1000
"""How often a running relay reads the key directory again (a rotation reaches it within)."""
KEY_DIRECTORY_NAME = "sender-cert-keys"
KEY_FILE_MODE = 0o600
KEY_DIRECTORY_MODE = 0o700
_SEED_BYTES = 32
_MAX_FILE_BYTES = 512  # a key file is ~150 bytes of JSON


class SenderKeyError(Exception):
    """A key file is unreadable or malformed; the message names it."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SenderCertificateKey:
    """One certificate key, as read from its file."""

    key_id: int
    seed: bytes
    public_key: bytes
    retired_at_ms: int | None
    """When it stopped signing; None while it signs."""

    def not_after_ms(self) -> int | None:
        """Until when certificates it signed may be accepted; None while it signs."""
        return (None if self.retired_at_ms is None
                else self.retired_at_ms + CERTIFICATE_LIFETIME_MS)

    def __repr__(self) -> str:
        return f"SenderCertificateKey(key_id={self.key_id}, seed=<redacted>)"


def sender_key_directory(data_dir: Path) -> Path:
    return data_dir / KEY_DIRECTORY_NAME


def _key_path(directory: Path, key_id: int) -> Path:
    return directory / f"key-{key_id}.json"


def _read_key(path: Path) -> SenderCertificateKey:
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise SenderKeyError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        status = os.fstat(descriptor)
        data = os.read(descriptor, _MAX_FILE_BYTES + 1)
    finally:
        os.close(descriptor)
    if not stat.S_ISREG(status.st_mode) or len(data) > _MAX_FILE_BYTES:
        raise SenderKeyError(f"{path} is not a sender-certificate key file")
    if status.st_mode & 0o077:
        log.warning("sender_key_readable_by_others", path=str(path),
                    mode=oct(stat.S_IMODE(status.st_mode)))
    try:
        fields = json.loads(data)
        key_id, seed = fields["key_id"], bytes.fromhex(fields["seed"])
        retired = fields["retired_at_ms"]
        if (type(key_id) is not int or not 1 <= key_id <= 2**31 - 1
                or len(seed) != _SEED_BYTES
                or not (retired is None or type(retired) is int)):
            raise ValueError("bad field")
    except (ValueError, KeyError, TypeError):
        raise SenderKeyError(f"{path} is not a sender-certificate key file") from None
    return SenderCertificateKey(key_id=key_id, seed=seed, retired_at_ms=retired,
                                public_key=ed25519_keypair_from_private(seed).public_key)


def _write_key(directory: Path, key: SenderCertificateKey, *, exclusive: bool = False) -> bool:
    """Write ``key``'s file 0600, durably, whole or not at all (a temporary file renamed).

    ``exclusive``: only if no file has that key's id (linked, not renamed); False if one has
    (another process made that key first)."""
    path = _key_path(directory, key.key_id)
    content = json.dumps({"key_id": key.key_id, "seed": key.seed.hex(),
                          "retired_at_ms": key.retired_at_ms}).encode() + b"\n"
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    descriptor = os.open(temporary, flags, KEY_FILE_MODE)
    try:
        try:
            os.fchmod(descriptor, KEY_FILE_MODE)  # whatever the umask
            os.write(descriptor, content)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        if exclusive:
            try:
                os.link(temporary, path)
            except FileExistsError:
                return False
        else:
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    directory_descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory_descriptor)
    finally:
        os.close(directory_descriptor)
    return True


def _new_key(key_id: int) -> SenderCertificateKey:
    seed = secrets.token_bytes(_SEED_BYTES)
    return SenderCertificateKey(key_id=key_id, seed=seed, retired_at_ms=None,
                                public_key=ed25519_keypair_from_private(seed).public_key)


def _read_all(directory: Path) -> list[SenderCertificateKey]:
    if not directory.is_dir():
        return []
    return sorted((_read_key(path) for path in directory.glob("key-*.json")),
                  key=lambda key: key.key_id)


def _ensure_directory(directory: Path) -> None:
    directory.mkdir(mode=KEY_DIRECTORY_MODE, parents=True, exist_ok=True)
    directory.chmod(KEY_DIRECTORY_MODE)


@dataclass(frozen=True, kw_only=True, slots=True)
class SenderKeyring:
    """The keys read at one moment: the one that signs and those still accepted."""

    signing: SenderCertificateKey
    accepted: tuple[SenderCertificateKey, ...]
    """Every key still published, the signing one included, newest first."""
    loaded_at_ms: int

    def issue(self, *, user_id: str, device_id: int, account_key: bytes, identity_key: bytes,
              now_ms: int) -> tuple[bytes, int]:
        """A certificate for the device, signed by the signing key; and its expiry."""
        expires_ms = now_ms + CERTIFICATE_LIFETIME_MS
        certificate = issue_sender_certificate(
            signing_key=self.signing.seed, key_id=self.signing.key_id, user_id=user_id,
            device_id=device_id, account_key=account_key, identity_key=identity_key,
            expires_ms=expires_ms)
        return certificate, expires_ms


def load_keyring(directory: Path, *, now_ms: int, create: bool = True) -> SenderKeyring:
    """Read the keys; with ``create``, make the first key if there is none (a new relay).

    Raises:
        SenderKeyError: a file is unreadable or malformed, or no key signs (``create`` false,
            or every key retired).
    """
    keys = _read_all(directory)
    if not any(key.retired_at_ms is None for key in keys):
        if not create:
            raise SenderKeyError(f"no signing key in {directory}: run `cryptopass-relay "
                                 "sender-keys rotate`, or copy the cluster's directory")
        _ensure_directory(directory)
        first = _new_key(max((key.key_id for key in keys), default=0) + 1)
        if not _write_key(directory, first, exclusive=True):  # another process made it first
            return load_keyring(directory, now_ms=now_ms, create=False)
        log.info("sender_key_created", key_id=first.key_id)
        keys.append(first)
    live = [key for key in keys
            if (not_after := key.not_after_ms()) is None or not_after > now_ms]
    signing = max((key for key in live if key.retired_at_ms is None),
                  key=lambda key: key.key_id)
    return SenderKeyring(signing=signing, loaded_at_ms=now_ms,
                         accepted=tuple(sorted(live, key=lambda key: -key.key_id)))


def rotate_keys(directory: Path, *, now_ms: int) -> SenderKeyring:
    """Retire the signing key(s) and make a new one; remove the files of keys past their
    overlap. Returns the keys as a relay will read them."""
    _ensure_directory(directory)
    keys = _read_all(directory)
    for key in keys:
        not_after = key.not_after_ms()
        if not_after is not None and not_after <= now_ms:
            _key_path(directory, key.key_id).unlink(missing_ok=True)
        elif key.retired_at_ms is None:
            _write_key(directory, SenderCertificateKey(
                key_id=key.key_id, seed=key.seed, public_key=key.public_key,
                retired_at_ms=now_ms))
    _write_key(directory, _new_key(max((key.key_id for key in keys), default=0) + 1),
               exclusive=True)
    return load_keyring(directory, now_ms=now_ms, create=False)
