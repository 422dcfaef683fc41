"""Groups as this device knows them: members, sender-key chains, and their end-to-end formats.

A group is a random 32-byte id, a name and a member list (phone -> user id), known only to
the members' devices: the relay never sees any of it (docs/GROUPS.md). Each member device has
its own sending chain per group (`crypto.sender_keys`); the group keeps this device's chain,
the member devices it was handed to, and the chains other member devices handed over.

Three formats travel end to end (msgpack maps, version 1):

- **group key** (pairwise, an ordinary SEND): ``{"kind": "group_key", "group", "name",
  "members", "revision", "key"}``: a member device's chain for the group, with the group as
  the sender knows it, so that a member added to the group learns it from the first one.
- **group header** (pairwise, each recipient device's key material of a MULTI_SEND):
  ``{"kind": "group_header", "group", "chain", "iteration", "digest"}``: which group and
  chain the shared ciphertext belongs to, and its SHA-256, so the shared payload carries no
  group id in clear and cannot be swapped for another.
- **group content** (inside the sender-key ciphertext): ``{"kind": "text" | "file" |
  "membership", ...}``: a text; a file, ``{"kind": "file", "file": BYTES}`` carrying the
  pairwise file content (client/message_content.py) whose blob every member device fetches;
  or a membership change (every member applies it; a removal makes every remaining member
  start a new chain, so the removed never reads what follows).

Pure: no I/O. `GroupBook.to_state`/`from_state` give the saved form (kept in the profile's
end-to-end state, client/messenger.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgpack

from crypto.errors import MalformedMessageError
from crypto.primitives import CryptoError, RandomSource
from crypto.sender_keys import (
    GROUP_ID_SIZE,
    ReceivingChain,
    SenderKeyDistribution,
    SenderKeyMessage,
    SendingChain,
)

__all__ = ["GROUP_CONTENT_VERSION", "MAX_CHAINS_PER_DEVICE", "MAX_GROUPS",
           "MAX_GROUP_FILE_ANNOUNCEMENT_BYTES", "MAX_GROUP_MEMBERS", "MAX_GROUP_NAME_CHARS",
           "Group", "GroupBook", "GroupContentError", "GroupFile", "GroupHeader", "GroupKey",
           "GroupMembership", "GroupText", "NoSenderKeyError", "decode_group_content",
           "decode_group_pairwise", "encode_group_file", "encode_group_header",
           "encode_group_key", "encode_group_membership", "encode_group_text"]

GROUP_CONTENT_VERSION = 1
MAX_GROUP_MEMBERS = 256
"""Users in one group: with a few devices each, one message stays under the relay's
MAX_MULTI_SEND_DEVICES, and a member list stays far under the plaintext limit."""
MAX_GROUP_NAME_CHARS = 64  # A name to show, not a document.
MAX_GROUPS = 1000
"""Groups one device keeps: a group another member creates costs this device state, so a
hostile member cannot grow it without end."""
MAX_CHAINS_PER_DEVICE = 2
"""Chains kept per sending device of a group: its newest, and the one before for messages
sent just before it changed chains (as libsignal keeps a few per sender key record)."""
_MAX_PHONE_CHARS = 32
_MAX_USER_ID_CHARS = 64
_MAX_TEXT_BYTES = 60 * 1024  # client.message_content.MAX_TEXT_BYTES
_MAX_TIMESTAMP_CHARS = 64
MAX_GROUP_FILE_ANNOUNCEMENT_BYTES = 2048
"""Bytes of a file announcement in a group message: its largest legal form (a 255-byte name,
a 127-character media type, a 64-byte blob id, key, digest, numbers and times) is under 1 KiB;
the file itself is a blob, never in the message."""

Device = tuple[str, int]
"""(user id, device id)."""


class GroupContentError(ValueError):
    """A group format is malformed, of another version, or breaks a limit."""


@dataclass(frozen=True, kw_only=True)
class GroupKey:
    """A member device's chain for a group, with the group as that member knows it."""

    group_id: bytes
    name: str
    members: dict[str, str]
    revision: int
    distribution: SenderKeyDistribution


@dataclass(frozen=True, kw_only=True)
class GroupHeader:
    """Which group, chain and iteration a MULTI_SEND's shared ciphertext is, for one device."""

    group_id: bytes
    chain_id: int
    iteration: int
    digest: bytes  #: SHA-256 of the shared ciphertext


@dataclass(frozen=True, kw_only=True)
class GroupText:
    sender_phone: str
    text: str
    sent_at: str


@dataclass(frozen=True, kw_only=True, repr=False)
class GroupFile:
    """A file sent to the group: the pairwise file content announcing its blob (its key and
    blob id are secrets: never in a log line)."""

    announcement: bytes  #: decoded by client.message_content.decode_content

    def __repr__(self) -> str:
        return f"GroupFile(bytes={len(self.announcement)})"


@dataclass(frozen=True, kw_only=True)
class GroupMembership:
    sender_phone: str
    name: str
    members: dict[str, str]
    revision: int


def _pack(value: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb({"v": GROUP_CONTENT_VERSION, **value})
    return packed


def _members_field(members: dict[str, str]) -> list[list[str]]:
    return sorted([phone, user_id] for phone, user_id in members.items())


def encode_group_key(group: Group, distribution: SenderKeyDistribution) -> bytes:
    return _pack({"kind": "group_key", "group": group.group_id, "name": group.name,
                  "members": _members_field(group.members), "revision": group.revision,
                  "key": distribution.encode()})


def encode_group_header(group_id: bytes, message: SenderKeyMessage, shared: bytes) -> bytes:
    return _pack({"kind": "group_header", "group": group_id, "chain": message.chain_id,
                  "iteration": message.iteration, "digest": hashlib.sha256(shared).digest()})


def encode_group_text(*, sender_phone: str, text: str, sent_at: str) -> bytes:
    if len(text.encode()) > _MAX_TEXT_BYTES:
        raise ValueError(f"the text is longer than {_MAX_TEXT_BYTES} bytes")
    return _pack({"kind": "text", "from": sender_phone, "text": text, "sent_at": sent_at})


def encode_group_file(announcement: bytes) -> bytes:
    """``announcement``: the file's content as `encode_file_content` made it."""
    if len(announcement) > MAX_GROUP_FILE_ANNOUNCEMENT_BYTES:
        raise ValueError(f"the file announcement is longer than "
                         f"{MAX_GROUP_FILE_ANNOUNCEMENT_BYTES} bytes")
    return _pack({"kind": "file", "file": announcement})


def encode_group_membership(group: Group, *, sender_phone: str) -> bytes:
    return _pack({"kind": "membership", "from": sender_phone, "name": group.name,
                  "members": _members_field(group.members), "revision": group.revision})


def _unpack(data: bytes) -> dict[str, Any]:
    try:
        value = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException) as error:
        raise GroupContentError("group content is not msgpack") from error
    if not isinstance(value, dict) or value.get("v") != GROUP_CONTENT_VERSION:
        raise GroupContentError("group content of an unsupported version")
    return value


def _text(value: dict[str, Any], name: str, limit: int) -> str:
    field_value = value.get(name)
    if not isinstance(field_value, str) or not field_value or len(field_value) > limit:
        raise GroupContentError(f"group field {name!r} is missing, not text or too long")
    return field_value


def _int(value: dict[str, Any], name: str) -> int:
    field_value = value.get(name)
    if not isinstance(field_value, int) or not 0 <= field_value < 2**63:
        raise GroupContentError(f"group field {name!r} is missing or out of range")
    return field_value


def _group_id(value: dict[str, Any]) -> bytes:
    group_id = value.get("group")
    if not isinstance(group_id, bytes) or len(group_id) != GROUP_ID_SIZE:
        raise GroupContentError("group field 'group' is not a group id")
    return group_id


def _members(value: dict[str, Any]) -> dict[str, str]:
    raw = value.get("members")
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_GROUP_MEMBERS:
        raise GroupContentError("group field 'members' is missing or too long")
    members: dict[str, str] = {}
    for entry in raw:
        if (not isinstance(entry, list) or len(entry) != 2
                or not all(isinstance(part, str) and part for part in entry)
                or len(entry[0]) > _MAX_PHONE_CHARS or len(entry[1]) > _MAX_USER_ID_CHARS):
            raise GroupContentError("group field 'members' holds a bad entry")
        members[entry[0]] = entry[1]
    return members


def decode_group_pairwise(value: dict[str, Any]) -> GroupKey | GroupHeader:
    """The group kinds of pairwise content (``value`` is the decoded map, version checked).

    Raises:
        GroupContentError: a field is missing, ill-typed or too long.
    """
    if value.get("kind") == "group_header":
        digest = value.get("digest")
        if not isinstance(digest, bytes) or len(digest) != hashlib.sha256().digest_size:
            raise GroupContentError("group field 'digest' is not a SHA-256")
        return GroupHeader(group_id=_group_id(value), chain_id=_int(value, "chain"),
                           iteration=_int(value, "iteration"), digest=digest)
    key = value.get("key")
    if not isinstance(key, bytes):
        raise GroupContentError("group field 'key' is not bytes")
    try:
        distribution = SenderKeyDistribution.decode(key)
    except MalformedMessageError as error:
        raise GroupContentError(f"group field 'key': {error}") from error
    group_id = _group_id(value)
    if distribution.group_id != group_id:
        raise GroupContentError("the sender key is for another group")
    return GroupKey(group_id=group_id, name=_text(value, "name", MAX_GROUP_NAME_CHARS),
                    members=_members(value), revision=_int(value, "revision"),
                    distribution=distribution)


def decode_group_content(data: bytes) -> GroupText | GroupFile | GroupMembership:
    """A decrypted group plaintext.

    Raises:
        GroupContentError: not a group content of ours.
    """
    value = _unpack(data)
    kind = value.get("kind")
    if kind == "text":
        text = value.get("text")
        if not isinstance(text, str) or len(text.encode()) > _MAX_TEXT_BYTES:
            raise GroupContentError("group field 'text' is missing, not text or too long")
        return GroupText(sender_phone=_text(value, "from", _MAX_PHONE_CHARS), text=text,
                         sent_at=_text(value, "sent_at", _MAX_TIMESTAMP_CHARS))
    if kind == "file":
        announcement = value.get("file")
        if (not isinstance(announcement, bytes)
                or len(announcement) > MAX_GROUP_FILE_ANNOUNCEMENT_BYTES):
            raise GroupContentError("group field 'file' is missing, not bytes or too long")
        return GroupFile(announcement=announcement)
    if kind == "membership":
        return GroupMembership(sender_phone=_text(value, "from", _MAX_PHONE_CHARS),
                               name=_text(value, "name", MAX_GROUP_NAME_CHARS),
                               members=_members(value), revision=_int(value, "revision"))
    raise GroupContentError("group content of an unknown kind")


@dataclass(kw_only=True, repr=False)
class Group:
    """One group on this device. Holds secrets (chains); never log it."""

    group_id: bytes
    name: str  #: this device's name for it (the creation message's, made unique here)
    members: dict[str, str]  #: phone -> user id, this device's own user included
    revision: int  #: raised by every membership change; an older one is not applied
    own_chain: SendingChain | None = None  #: None: start a new one before the next send
    distributed: set[Device] = field(default_factory=set)  #: devices holding ``own_chain``
    chains: dict[Device, list[ReceivingChain]] = field(default_factory=dict)  #: newest last

    def __repr__(self) -> str:
        return f"Group(members={len(self.members)}, revision={self.revision})"

    def sending_chain(self, random: RandomSource) -> SendingChain:
        """This device's chain, started anew when a member or device left."""
        if self.own_chain is None:
            self.own_chain = SendingChain.create(self.group_id, random)
            self.distributed = set()
        return self.own_chain

    def rekey(self) -> None:
        """Start a new chain before the next send: whoever held the current one (a removed
        member or device among them) cannot read what follows."""
        self.own_chain = None
        self.distributed = set()

    def follow_devices(self, current: set[Device]) -> bool:
        """The member devices are now ``current``: if one that holds this device's chain is
        gone, start a new chain; forget the chains of devices gone. True if re-keyed."""
        gone = self.distributed - current
        for device in [device for device in self.chains if device not in current]:
            del self.chains[device]
        if gone:
            self.rekey()
        return bool(gone)

    def apply_membership(self, members: dict[str, str], revision: int) -> None:
        """Take a newer member list; a removal re-keys and forgets the removed's chains."""
        removed = set(self.members.values()) - set(members.values())
        self.members, self.revision = dict(members), revision
        if removed:
            self.rekey()
            for device in [device for device in self.chains if device[0] in removed]:
                del self.chains[device]

    def accept_chain(self, sender: Device, distribution: SenderKeyDistribution) -> None:
        """Keep a member device's chain (a chain already known keeps its own position: a
        re-sent distribution must not move it back)."""
        known = self.chains.setdefault(sender, [])
        if any(chain.chain_id == distribution.chain_id for chain in known):
            return
        known.append(ReceivingChain.from_distribution(distribution))
        del known[:-MAX_CHAINS_PER_DEVICE]

    def open(self, sender: Device, header: GroupHeader, shared: bytes) -> bytes:
        """Open a shared ciphertext with the sender device's chain; the chain moves forward
        only if it opened.

        Raises:
            CryptoError: no such chain (never handed to this device, or the sender left), a
                replay, a bad signature, or a payload that is not the one the header names.
        """
        if hashlib.sha256(shared).digest() != header.digest:
            raise MalformedMessageError("the shared payload is not the one the header names")
        message = SenderKeyMessage.from_body(chain_id=header.chain_id,
                                             iteration=header.iteration, body=shared)
        known = self.chains.get(sender, [])
        for index, chain in enumerate(known):
            if chain.chain_id == header.chain_id:
                known[index], plaintext = chain.decrypt(message)
                return plaintext
        raise NoSenderKeyError("no sender key of this device for that chain")

    def to_state(self) -> dict[str, Any]:
        return {"id": self.group_id, "name": self.name, "members": _members_field(self.members),
                "revision": self.revision,
                "own": None if self.own_chain is None else self.own_chain.to_state(),
                "distributed": sorted([user_id, device_id]
                                      for user_id, device_id in self.distributed),
                "chains": [[user_id, device_id, [chain.to_state() for chain in chains]]
                           for (user_id, device_id), chains in self.chains.items()]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Group:
        return cls(group_id=bytes(state["id"]), name=str(state["name"]),
                   members={str(phone): str(user_id) for phone, user_id in state["members"]},
                   revision=int(state["revision"]),
                   own_chain=(None if state["own"] is None
                              else SendingChain.from_state(state["own"])),
                   distributed={(str(user_id), int(device_id))
                                for user_id, device_id in state["distributed"]},
                   chains={(str(user_id), int(device_id)): [ReceivingChain.from_state(chain)
                                                            for chain in chains]
                           for user_id, device_id, chains in state["chains"]})


class NoSenderKeyError(CryptoError):
    """No chain of the sending device for this group: it was never handed to this device."""


class GroupBook:
    """Every group of this device, by id and by its local name."""

    def __init__(self, groups: dict[bytes, Group] | None = None) -> None:
        self.groups: dict[bytes, Group] = groups or {}

    def named(self, name: str) -> Group | None:
        return next((group for group in self.groups.values() if group.name == name), None)

    def unique_name(self, name: str) -> str:
        """``name``, or ``name (2)``, ``name (3)``...: the first no group of this device has."""
        candidate, number = name, 1
        while self.named(candidate) is not None:
            number += 1
            candidate = f"{name} ({number})"
        return candidate

    def create(self, *, group_id: bytes, name: str, members: dict[str, str],
               revision: int) -> Group:
        """Raises ValueError: this device keeps MAX_GROUPS groups already."""
        if len(self.groups) >= MAX_GROUPS:
            raise ValueError(f"this device keeps {MAX_GROUPS} groups at most")
        group = Group(group_id=group_id, name=self.unique_name(name), members=dict(members),
                      revision=revision)
        self.groups[group_id] = group
        return group

    def open_shared(self, sender: Device, header: GroupHeader, shared: bytes) -> bytes:
        """Open a MULTI_SEND's shared ciphertext that ``header`` (the sender's pairwise
        record) names; the sender must be a member of the group.

        Raises:
            CryptoError: no such group or chain here, or the ciphertext does not open.
        """
        group = self.groups.get(header.group_id)
        if group is None or sender[0] not in group.members.values():
            raise NoSenderKeyError("a group this device is not in, or the sender is not")
        return group.open(sender, header, shared)

    def accept_key(self, sender: Device, key: GroupKey, *, own_user_id: str) -> None:
        """A member device's chain: keep it. An unknown group that lists both this user and
        the sender is joined; a newer member list from a member is taken."""
        group = self.groups.get(key.group_id)
        if group is None:
            if own_user_id not in key.members.values() or sender[0] not in key.members.values():
                return
            try:
                group = self.create(group_id=key.group_id, name=key.name,
                                    members=key.members, revision=key.revision)
            except ValueError:
                return  # MAX_GROUPS kept already: the key is dropped
        if sender[0] not in group.members.values():
            return
        if key.revision > group.revision:
            group.apply_membership(key.members, key.revision)
        if sender[0] in group.members.values():
            group.accept_chain(sender, key.distribution)

    def opened(self, sender: Device, group_id: bytes,
               plaintext: bytes) -> tuple[str, GroupText | GroupFile] | None:
        """An opened group message: a text or file to show with the group's local name, or a
        membership change from a member, applied (None: nothing to show)."""
        group = self.groups.get(group_id)
        if group is None:
            return None
        try:
            content = decode_group_content(plaintext)
        except GroupContentError:
            return None
        if isinstance(content, GroupMembership):
            if content.revision > group.revision and sender[0] in group.members.values():
                group.apply_membership(content.members, content.revision)
            return None
        return group.name, content

    def to_state(self) -> list[dict[str, Any]]:
        return [group.to_state() for group in self.groups.values()]

    @classmethod
    def from_state(cls, state: list[dict[str, Any]]) -> GroupBook:
        groups = [Group.from_state(entry) for entry in state]
        return cls({group.group_id: group for group in groups})
