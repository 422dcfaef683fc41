"""A client profile: one device's identity and settings, in a directory.

Files: ``profile.json`` (relay address, CA path, phone, user and device ids),
``identity.key`` (this device's Ed25519 private key seed, mode 0600),
``account.key`` (the account's Ed25519 private key seed, shared by the account's devices:
created at SMS enrolment, received from the approving device when linking; mode 0600),
``device.state`` (the end-to-end state: prekey secrets, sessions and contacts, mode 0600,
rewritten atomically after every change; see client/messenger.py) and
``received.json`` (recent envelope ids, to drop a delivery that arrives again
after a connection broke before its acknowledgement), ``profile.lock`` (the single-writer
lock). The directory is kept at 0700; every file is written by `client.profile_files`.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

from nacl.signing import SigningKey

from client.profile_files import ProfileLock, tighten_directory, write_private

__all__ = ["DEVICE_STATE_FILE", "PROFILE_VERSION", "RECENT_IDS_KEPT", "Profile", "ProfileError"]

PROFILE_VERSION = 1
DEVICE_STATE_FILE = "device.state"
RECENT_IDS_KEPT = 10_000
"""Envelope ids remembered for de-duplication (older re-deliveries cannot happen:
the relay only re-sends what is unacknowledged)."""


class ProfileError(Exception):
    """The profile is missing, incomplete or damaged; the message says what to do."""


@dataclass
class ProfileData:
    version: int = PROFILE_VERSION
    relay: str | None = None
    ca: str | None = None
    phone: str | None = None
    user_id: str | None = None
    device_id: int | None = None


class Profile:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = ProfileData()
        self.lock = ProfileLock(directory)
        """Held around every read-modify-write of the end-to-end state (client.messenger)."""
        path = directory / "profile.json"
        if directory.is_dir():
            tighten_directory(directory)
        if path.exists():
            try:
                raw = json.loads(path.read_text())
                self.data = ProfileData(**raw)
            except (ValueError, TypeError) as error:
                raise ProfileError(f"{path} is damaged: {error}") from error
            if self.data.version != PROFILE_VERSION:
                raise ProfileError(f"{path} has version {self.data.version}; "
                                   f"this client reads version {PROFILE_VERSION}")

    def save(self) -> None:
        write_private(self.directory / "profile.json",
                       json.dumps(asdict(self.data), indent=2).encode())

    def signing_key(self, *, create: bool = False) -> SigningKey:
        path = self.directory / "identity.key"
        if path.exists():
            seed = path.read_bytes()
            if len(seed) != 32:
                raise ProfileError(f"{path} is damaged (expected a 32-byte key)")
            return SigningKey(seed)
        if not create:
            raise ProfileError(f"no identity key in {self.directory}: {self._not_enrolled_hint()}")
        key = SigningKey.generate()
        write_private(path, bytes(key))
        return key

    def account_key(self) -> SigningKey | None:
        """The account's private key, or None if this profile holds none yet."""
        path = self.directory / "account.key"
        if not path.exists():
            return None
        seed = path.read_bytes()
        if len(seed) != 32:
            raise ProfileError(f"{path} is damaged (expected a 32-byte key)")
        return SigningKey(seed)

    def save_account_key(self, key: SigningKey) -> None:
        """Keep the account's private key (mode 0600): it signs the account's device list."""
        write_private(self.directory / "account.key", bytes(key))

    def require_enrolled(self) -> tuple[str, int, str, str | None]:
        """(user_id, device_id, relay, ca) or a ProfileError saying what to run."""
        data = self.data
        if data.user_id is None or data.device_id is None or data.relay is None:
            raise ProfileError(f"the profile {self.directory} is not enrolled: "
                               f"{self._not_enrolled_hint()}")
        return data.user_id, data.device_id, data.relay, data.ca

    def _not_enrolled_hint(self) -> str:
        """What to run, with this profile's directory, to enrol it (or finish enrolling)."""

        def command(*words: str) -> str:
            return shlex.join(["cryptopass", "--profile", str(self.directory), *words])

        data = self.data
        if data.phone is not None and data.relay is not None:
            enrol = ["enrol", data.phone, "--relay", data.relay,
                     *(["--ca", data.ca] if data.ca else [])]
            return (f"finish enrolling {data.phone} with `{command('verify', 'CODE')}` (the "
                    f"code sent by SMS), or start again with `{command(*enrol)}`")
        return (f"run `{command('enrol', '+NUMBER', '--relay', 'HOST:PORT', '--ca', 'CERT')}`, "
                f"then `{command('verify', 'CODE')}`")

    def device_state(self) -> bytes | None:
        """The saved end-to-end state, or None before the first `save_device_state`."""
        path = self.directory / DEVICE_STATE_FILE
        return path.read_bytes() if path.exists() else None

    def device_state_stamp(self) -> tuple[int, int, int] | None:
        """What identifies the saved state's current version on disk (inode, size, mtime):
        unchanged means nobody replaced it since it was last read or written here."""
        try:
            info = (self.directory / DEVICE_STATE_FILE).stat()
        except FileNotFoundError:
            return None
        return info.st_ino, info.st_size, info.st_mtime_ns

    def save_device_state(self, data: bytes) -> None:
        """Replace the end-to-end state atomically (mode 0600: it holds private keys)."""
        write_private(self.directory / DEVICE_STATE_FILE, data)

    def recent_ids(self) -> list[int]:
        path = self.directory / "received.json"
        if not path.exists():
            return []
        try:
            value = json.loads(path.read_text())
        except ValueError:
            return []
        return [item for item in value if isinstance(item, int)] if isinstance(value, list) else []

    def save_recent_ids(self, ids: list[int]) -> None:
        write_private(self.directory / "received.json",
                       json.dumps(ids[-RECENT_IDS_KEPT:]).encode())
