"""Finishing an SMS enrolment: the one path the CLI and the tests use.

An SMS enrolment always creates a new account identity (docs/CRYPTO.md, "Account identity and
device lists"): a fresh account key is kept in the profile *before* the relay registers it,
the relay gets the account key and the first signed device list (this device alone), and the
profile pins its own account as its first contact. If the number had an account already, the
relay revokes that account's devices and its contacts see the safety number change.
"""

from __future__ import annotations

from pathlib import Path

from nacl.signing import SigningKey

from client.connection import CONNECT_TIMEOUT_SECONDS, connect_any
from client.messenger import Messenger, create_device_state, own_contact
from client.profile import Profile, ProfileError
from crypto.device_list import sign_device_list
from crypto.primitives import ed25519_keypair_from_private
from transport.addresses import parse_relay_list
from transport.quic import QuicEndpoint

__all__ = ["verify_enrolment"]


async def verify_enrolment(profile: Profile, code: str, *,
                           endpoint: QuicEndpoint | None = None,
                           connect_timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
    """Trade the SMS ``code`` for a new account with this device on it, then publish the
    device's prekeys.

    Raises:
        ProfileError: no enrolment in progress in ``profile``.
        RelayError: VERIFICATION_FAILED, ORGANISATION_SUSPENDED, ...
    """
    phone, relay = profile.data.phone, profile.data.relay
    if phone is None or relay is None:
        raise ProfileError(f"the profile {profile.directory} has no enrolment in progress")
    addresses = parse_relay_list(relay)
    identity_key = profile.signing_key().verify_key.encode()
    account_key = SigningKey.generate()
    profile.save_account_key(account_key)
    account = ed25519_keypair_from_private(bytes(account_key))
    async with connect_any(addresses, ca=Path(profile.data.ca) if profile.data.ca else None,
                           connect_timeout=connect_timeout, endpoint=endpoint) as client:
        enrolled = await client.enrol_verify(phone, code, identity_key, account)
    profile.data.user_id, profile.data.device_id = enrolled.user_id, enrolled.device_id
    profile.save()
    first_list = sign_device_list(account, version=1, devices=[identity_key])
    create_device_state(profile, contacts={phone: own_contact(phone, enrolled.user_id,
                                                                first_list)})
    # Publish the signed, last-resort and one-time prekeys at once, so that others can start
    # sessions with this device (PROTOCOL.md "Prekeys").
    async with Messenger.connect(profile, endpoint=endpoint, connect_timeout=connect_timeout):
        pass
