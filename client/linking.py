"""Linking a device to an account, approving it from a device already on the account, and
removing one.

    new device:       cryptopass --profile NEW link --relay HOST:PORT --ca CERT   (shows a code)
    existing device:  cryptopass --profile OLD devices approve CODE
    existing device:  cryptopass --profile OLD devices remove ID

The exchange (`crypto.provisioning`, docs/CRYPTO.md "Linking a device") runs through a relay
link channel and is end-to-end encrypted to the provisioning key the code carries; the relay
sees only ciphertext, and a relay that answers in the new device's place is detected because
it cannot open the offer. The approving device signs the new device list with the account key
and publishes it (the relay registers the new device and returns its id), hands the new device
the account key, its ids and the list. The new device, once its prekeys are published, tells
the account's other devices end to end (a signed list update they check and follow).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from client.connection import CONNECT_TIMEOUT_SECONDS, RelayClient, RelayError, connect_any
from client.messenger import Messenger, create_device_state, own_contact
from client.profile import Profile, ProfileError
from crypto.device_list import SignedDeviceList
from crypto.primitives import SystemRandom, ed25519_keypair_from_private
from crypto.provisioning import (
    ProvisionedAccount,
    ProvisioningKeys,
    decode_link_code,
    encode_link_code,
    open_offer,
    start_approval,
)
from transport.addresses import parse_relay_list
from transport.quic import QuicEndpoint
from wire.frames import ErrorCode

__all__ = ["APPROVAL_WAIT_S", "LinkFailed", "Linked", "approve_link", "link_new_device",
           "publish_signed_list", "remove_device"]

APPROVAL_WAIT_S = 120.0
"""How long the approving device waits for the new device's answer."""


class LinkFailed(Exception):
    """The link could not be completed; the message says why and what to do."""


@dataclass(frozen=True, kw_only=True)
class Linked:
    """The outcome of a link, on either side."""

    user_id: str
    device_id: int
    device_list_version: int


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _next_message(client: RelayClient, channel_id: bytes, *, until_ms: int) -> bytes:
    """The next message the other side leaves on the channel (long polls until ``until_ms``).

    Raises:
        LinkFailed: nothing came in time.
    """
    while _now_ms() < until_ms:
        payloads = await client.link_fetch(channel_id)
        if payloads:
            return payloads[0]
    raise LinkFailed("the other device did not answer before the link code expired; "
                     "start again with a new code")


async def link_new_device(profile: Profile, relay: str, ca: Path | None, *,
                          show_code: Callable[[str], None],
                          endpoint: QuicEndpoint | None = None,
                          connect_timeout: float = CONNECT_TIMEOUT_SECONDS) -> Linked:
    """Show a link code, wait for an existing device of the account to approve it, then keep
    the account in ``profile`` and publish this device's prekeys. ``relay`` is ``HOST:PORT``
    or several, comma-separated, tried in order (`connect_any`); it and ``ca`` are kept as
    given (pass an absolute path).

    Raises:
        LinkFailed: the code expired, or the exchange was tampered with.
        ProfileError: the profile is already enrolled.
    """
    if profile.data.user_id is not None:
        raise ProfileError(f"the profile {profile.directory} already belongs to an account; "
                           f"use a new profile directory to link a new device")
    identity = profile.signing_key(create=True)
    keys = ProvisioningKeys.generate(SystemRandom())
    addresses = parse_relay_list(relay)
    async with connect_any(addresses, ca=ca, connect_timeout=connect_timeout,
                           endpoint=endpoint) as client:
        opened = await client.link_open()
        show_code(encode_link_code(opened.channel_id, keys.public_key))
        offer = await _next_message(client, opened.channel_id, until_ms=opened.expires_at)
        session = open_offer(keys, opened.channel_id, offer)
        await client.link_post(opened.channel_id, session.reply(identity.verify_key.encode()))
        final = await _next_message(client, opened.channel_id, until_ms=opened.expires_at)
        account = session.open_final(final)
    profile.data.relay, profile.data.ca = relay, str(ca) if ca else None
    profile.data.phone = account.phone
    profile.data.user_id, profile.data.device_id = account.user_id, account.device_id
    profile.save_account_key(SigningKey(account.account.private_key))
    profile.save()
    create_device_state(profile, contacts={
        account.phone: own_contact(account.phone, account.user_id, account.device_list)})
    async with Messenger.connect(profile, endpoint=endpoint,
                                 connect_timeout=connect_timeout) as messenger:
        # Connecting published this device's prekeys; now the account's other devices can
        # start sessions with it: tell them, end to end, about the list that added it.
        await messenger.announce_device_list(account.device_list)
    return Linked(user_id=account.user_id, device_id=account.device_id,
                  device_list_version=account.device_list.version)


def _account(messenger: Messenger) -> SigningKey:
    key = messenger.profile.account_key()
    if key is None:
        raise ProfileError(f"the profile {messenger.profile.directory} holds no account key "
                           f"(enrolled before account keys existed): enrol it again")
    return key


async def publish_signed_list(messenger: Messenger,
                              device_list: SignedDeviceList) -> list[tuple[int, bytes]]:
    """Publish ``device_list``; return the devices the relay added for it (id, key).

    Raises:
        LinkFailed: another device of the account published a list meanwhile.
    """
    try:
        published = await messenger.client.publish_device_list(device_list.encoded)
    except RelayError as error:
        if error.code != ErrorCode.STALE_DEVICE_LIST:
            raise
        # Either this very list went through and only the answer was lost, or another device
        # signed a list of the same version first: the relay's current list tells which.
        view = await messenger.account_view(messenger.user_id)
        if view.device_list.encoded != device_list.encoded:
            raise LinkFailed("another device of this account changed its device list "
                             "meanwhile; run the command again") from error
        return sorted(view.devices.items())
    return [(added.device_id, added.identity_key) for added in published.added]


async def approve_link(messenger: Messenger, code_text: str) -> Linked:
    """Approve the new device that shows ``code_text``: add it to the account's signed list
    and hand it the account.

    Raises:
        LinkCodeError: the code is mistyped.
        ProvisioningError: the answer was not made by the device that shows the code (the
            relay or someone else interfered): nothing was published.
        LinkFailed: no answer in time.
    """
    code = decode_link_code(code_text)
    account_key = _account(messenger)
    account = ed25519_keypair_from_private(bytes(account_key))
    client = messenger.client
    approval, offer = start_approval(code, SystemRandom())
    await client.link_post(code.channel_id, offer)
    reply = await _next_message(client, code.channel_id,
                                until_ms=_now_ms() + int(APPROVAL_WAIT_S * 1000))
    new_identity = approval.open_reply(reply)
    async with messenger.exclusive():
        view = await messenger.own_devices()
        if new_identity in view.device_list.devices:
            raise LinkFailed("that device is already on this account's list")
        # From the devices the relay still has (a key an administrator revoked drops out).
        new_list = view.device_list.with_devices(account, {*view.devices.values(),
                                                           new_identity})
        added = [device_id for device_id, key in await publish_signed_list(messenger, new_list)
                 if key == new_identity]
        if not added:
            raise LinkFailed("the relay did not register the new device")
        await client.link_post(code.channel_id, approval.final(ProvisionedAccount(
            account=account, user_id=messenger.user_id, device_id=added[0],
            phone=messenger.phone, device_list=new_list)))
        await messenger.own_devices()
    return Linked(user_id=messenger.user_id, device_id=added[0],
                  device_list_version=new_list.version)


async def remove_device(messenger: Messenger, device_id: int) -> Linked:
    """Remove ``device_id`` from the account: sign and publish a list without it (the relay
    revokes it at once), and tell the remaining devices.

    Raises:
        LinkFailed: no such device on the list, or it is this device.
    """
    if device_id == messenger.device_id:
        raise LinkFailed("a device cannot remove itself: remove it from another device of "
                         "the account")
    account = ed25519_keypair_from_private(bytes(_account(messenger)))
    async with messenger.exclusive():
        view = await messenger.own_devices()
        key = view.devices.get(device_id)
        if key is None:
            raise LinkFailed(f"device {device_id} is not on this account's signed list")
        new_list = view.device_list.with_devices(account, set(view.devices.values()) - {key})
        await publish_signed_list(messenger, new_list)
        await messenger.own_devices()
    await messenger.announce_device_list(new_list)
    return Linked(user_id=messenger.user_id, device_id=device_id,
                  device_list_version=new_list.version)
