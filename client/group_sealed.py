"""A group message sent sealed: the relay learns neither the group nor who sent it.

When every recipient user's delivery token is known (each member shared its profile key
with this account, as `client.messenger` does with the first message written to a contact
and `client.group_messaging` with a group's members), the MULTI_SEND to them goes sealed: each
device's record (its pairwise-encrypted group header) is sealed with this device's sender
certificate (`crypto.sealed_sender.seal`), and the whole goes on a connection of its own that
never authenticates (`client.connection.connect_anonymous`), with one delivery token per
recipient user. The shared ciphertext needs no sealing: it names no one, and only members
hold the chain that opens it and the key that checks its signature.

Any member without a known token, or tokens refused, and the message goes identified instead
(`client.group_messaging`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from client.connection import RelayError, connect_anonymous
from client.contacts import Contact
from client.messenger import Messenger
from client.sealed import current_certificate, seal_payloads
from crypto.delivery_token import delivery_token
from transport.addresses import parse_relay_list
from wire.frames import ErrorCode

__all__ = ["SealedRefused", "delivery_tokens", "seal_records", "send_sealed_group"]


class SealedRefused(Exception):
    """The relay refused a recipient's delivery token: send identified instead."""


def delivery_tokens(messenger: Messenger, contacts: Sequence[Contact],
                    recipients: Mapping[str, Mapping[int, bytes]]) -> dict[str, bytes] | None:
    """The delivery token of every recipient user (other members: this account's own devices
    go identified), or None if one is unknown or sealing is off."""
    if not messenger.seal_by_default:
        return None
    tokens: dict[str, bytes] = {}
    for contact in contacts:
        if contact.user_id not in recipients:
            continue
        if contact.organisation or contact.profile_key is None:
            return None
        tokens[contact.user_id] = delivery_token(contact.profile_key)
    return tokens if set(tokens) == set(recipients) else None


async def seal_records(messenger: Messenger, records: Mapping[str, Mapping[int, bytes]],
                       contacts: Sequence[Contact]) -> dict[str, dict[int, bytes]]:
    """Each device's record sealed for that device's identity key with this device's
    certificate (renewed first when it expires soon)."""
    certificate = await current_certificate(messenger.client, messenger.sealed,
                                            now_ms=time.time_ns() // 1_000_000)
    keys = {contact.user_id: contact.devices for contact in contacts}
    return {user_id: seal_payloads(devices, keys[user_id], certificate=certificate,
                                   identity=messenger.identity)
            for user_id, devices in records.items()}


async def send_sealed_group(messenger: Messenger, recipients: Mapping[str, Mapping[int, bytes]],
                            shared: bytes, tokens: Mapping[str, bytes], *,
                            client_message_id: bytes) -> None:
    """The sealed MULTI_SEND, on a connection that never authenticates.

    Raises:
        SealedRefused: a delivery token was refused (nothing stored).
        MismatchedDevices, RelayError: as `RelayClient.multi_send`.
    """
    _, _, relay, ca = messenger.profile.require_enrolled()
    host, port = parse_relay_list(relay)[0]
    refusal: RelayError | None = None
    async with connect_anonymous(host, port, ca=Path(ca) if ca else None) as anonymous:
        try:
            await anonymous.sealed_multi_send(recipients, shared,
                                              client_message_id=client_message_id,
                                              delivery_tokens=dict(tokens))
        except RelayError as error:  # raised once the connection closed, not inside it
            refusal = error
    if refusal is not None and refusal.code == ErrorCode.DELIVERY_TOKEN_REFUSED:
        raise SealedRefused(str(refusal)) from refusal
    if refusal is not None:
        raise refusal
