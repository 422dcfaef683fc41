"""Enrolment by SMS code: request a code for a number, then trade it for a new account identity
(an account key, its first signed device list, and the one device on it).

An attacker must not learn from ``start`` whether a number is declared: a
declared and an undeclared number get the same answer, the same exceptions,
the same rate limit and the same store work; only the SMS differs, and it is
sent in the background (see ``enrolment.sms``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Protocol

import nacl.bindings

from crypto.device_list import DeviceListError, decode_device_list
from enrolment.codes import (
    CODE_TTL_MS,
    MAX_CHECKS_PER_CODE,
    MAX_DEVICES_PER_USER,
    MAX_SENDS_PER_NUMBER_PER_DAY,
    SEND_WINDOW_MS,
    codes_match,
    generate_code,
    hash_code,
    is_well_formed_code,
    phone_key,
)
from enrolment.errors import (
    InvalidRequest,
    OrganisationInactive,
    RateLimited,
    TooManyDevices,
    VerificationFailed,
)
from enrolment.numbers import parse_phone
from enrolment.sms import SmsDispatcher, SmsMessage, utc_timestamp
from storage.base import (
    Directory,
    EnrolmentStore,
    Registration,
    RegistrationRefusal,
    RegistrationRefused,
)

__all__ = [
    "ENROLMENT_SECRET_NAME",
    "FIRST_DEVICE_LIST_VERSION",
    "IDENTITY_KEY_BYTES",
    "REENROLMENT_REVOKE_REASON",
    "SECRET_BYTES",
    "EnrolmentService",
    "EnrolmentServiceStore",
]

ENROLMENT_SECRET_NAME = "enrolment"  # noqa: S105 (the name of a secret, not one)
"""Name of the HMAC key in ``EnrolmentStore.get_or_create_secret``."""

SECRET_BYTES = 32
"""Size of the HMAC key: the full strength of HMAC-SHA256."""

IDENTITY_KEY_BYTES = 32
"""Size of an Ed25519 public key."""

REENROLMENT_REVOKE_REASON = "this number was enrolled on another device"
"""What a device revoked by a new enrolment of its number is told (``RevokedDevice.reason``)."""

FIRST_DEVICE_LIST_VERSION = 1
"""The version of a new account's first device list, signed by its enrolling device."""

_CODE_TTL_MINUTES = CODE_TTL_MS // 60_000


class EnrolmentServiceStore(EnrolmentStore, Directory, Protocol):
    """What enrolment needs of the store: codes, registration and the enrolment secret, and
    the directory look-up that decides whether an SMS leaves."""


class EnrolmentService:
    """Sends verification codes and registers devices against them."""

    def __init__(
        self,
        store: EnrolmentServiceStore,
        dispatcher: SmsDispatcher,
        *,
        secret: bytes,
        randbelow: Callable[[int], int] = secrets.randbelow,
    ) -> None:
        if len(secret) < SECRET_BYTES:
            raise ValueError(f"the enrolment secret must have at least {SECRET_BYTES} bytes")
        self._store = store
        self._dispatcher = dispatcher
        self._secret = secret
        self._randbelow = randbelow

    @classmethod
    async def create(
        cls,
        store: EnrolmentServiceStore,
        dispatcher: SmsDispatcher,
        *,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
        randbelow: Callable[[int], int] = secrets.randbelow,
    ) -> EnrolmentService:
        """Build the service with the store's enrolment secret, creating it on first use.

        Every node of a cluster gets the same secret, so a code sent by one node
        verifies on another.
        """
        secret = await store.get_or_create_secret(
            ENROLMENT_SECRET_NAME, token_bytes(SECRET_BYTES)
        )
        return cls(store, dispatcher, secret=secret, randbelow=randbelow)

    async def start(self, phone_text: str, now: int) -> None:
        """Send a verification code to ``phone_text`` if it is declared.

        Returns the same way whether or not the number is declared.

        Raises:
            InvalidPhoneNumber: the text is not a valid international number.
            RateLimited: ``MAX_SENDS_PER_NUMBER_PER_DAY`` codes were already
                requested in the last ``SEND_WINDOW_MS``.
        """
        phone = parse_phone(phone_text)
        key = phone_key(self._secret, phone)
        code = generate_code(self._randbelow)
        recorded = await self._store.record_verification_code(
            phone_key=key,
            code_hash=hash_code(self._secret, key, code),
            now=now,
            expires_at=now + CODE_TTL_MS,
            window_ms=SEND_WINDOW_MS,
            max_sends=MAX_SENDS_PER_NUMBER_PER_DAY,
        )
        if not recorded:
            raise RateLimited()
        user = await self._store.find_user_by_phone(phone)
        # Only declared numbers get an SMS. The organisation's state is checked
        # at registration: the directory has no lookup by organisation id yet, so users
        # of a suspended organisation still receive a code they cannot use.
        if user is not None:
            self._dispatcher.submit(
                SmsMessage(
                    to=phone,
                    body=(
                        f"Your Cryptopass code is {code}. "
                        f"It expires in {_CODE_TTL_MINUTES} minutes."
                    ),
                    sent_at=utc_timestamp(now),
                )
            )

    async def verify(self, phone_text: str, code: str, identity_key: bytes, account_key: bytes,
                     device_list: bytes, now: int) -> Registration:
        """Create a new account identity for the number, with one device, if ``code`` is the
        pending one.

        ``account_key`` is the new account's Ed25519 key and ``device_list`` its first device
        list (``crypto.device_list``): version 1, signed by ``account_key``, listing
        ``identity_key`` only. The number's earlier devices, if any, are revoked with
        ``REENROLMENT_REVOKE_REASON`` (``Registration.revoked``). Every call with a
        well-formed request uses one of the code's ``MAX_CHECKS_PER_CODE`` checks; a
        successful one consumes the code.

        Raises:
            InvalidPhoneNumber: the text is not a valid international number.
            InvalidRequest: the code is not 6 digits, a key is not an Ed25519 public key, or
                the list is not the new account's first list of this one device (nothing is
                counted); or ``account_key`` is already the number's (one check is counted,
                the code stays pending).
            VerificationFailed: wrong, expired, exhausted or used code, or an
                unknown number (deliberately indistinguishable).
            TooManyDevices: the user already has ``MAX_DEVICES_PER_USER`` devices.
            OrganisationInactive: the organisation is suspended or terminated.
        """
        phone = parse_phone(phone_text)
        if not is_well_formed_code(code):
            raise InvalidRequest("the verification code must be 6 digits")
        _check_identity_key(identity_key)
        _check_first_device_list(account_key, device_list, identity_key)
        key = phone_key(self._secret, phone)
        pending_hash = await self._store.take_verification_attempt(
            phone_key=key, now=now, max_attempts=MAX_CHECKS_PER_CODE
        )
        if pending_hash is None:
            raise VerificationFailed()
        if not codes_match(hash_code(self._secret, key, code), pending_hash):
            raise VerificationFailed()
        try:
            return await self._store.register_device(
                phone=phone,
                phone_key=key,
                code_hash=pending_hash,
                identity_key=identity_key,
                account_key=account_key,
                device_list=device_list,
                device_list_version=FIRST_DEVICE_LIST_VERSION,
                now=now,
                max_devices=MAX_DEVICES_PER_USER,
                revoke_reason=REENROLMENT_REVOKE_REASON,
            )
        except RegistrationRefused as refusal:
            raise _translate_refusal(refusal.reason) from refusal


def _check_identity_key(identity_key: bytes, name: str = "identity key") -> None:
    if len(identity_key) != IDENTITY_KEY_BYTES:
        raise InvalidRequest(f"the {name} must be {IDENTITY_KEY_BYTES} bytes")
    # nacl.signing.VerifyKey only checks the length; this rejects encodings that
    # are not on the curve and small-order points (which any signature verifies).
    if not nacl.bindings.crypto_core_ed25519_is_valid_point(identity_key):
        raise InvalidRequest(f"the {name} is not a valid Ed25519 public key")


def _check_first_device_list(account_key: bytes, device_list: bytes,
                             identity_key: bytes) -> None:
    """A new account's first list: signed by ``account_key``, version 1, this device only."""
    _check_identity_key(account_key, "account key")
    try:
        signed = decode_device_list(device_list, account_key=account_key)
    except DeviceListError as error:
        raise InvalidRequest(f"the device list is not valid: {error}") from error
    if signed.version != FIRST_DEVICE_LIST_VERSION:
        raise InvalidRequest(
            f"a new account's device list has version {FIRST_DEVICE_LIST_VERSION}")
    if signed.devices != frozenset((identity_key,)):
        raise InvalidRequest("a new account's device list lists exactly the enrolling device")


def _translate_refusal(reason: RegistrationRefusal) -> Exception:
    if reason is RegistrationRefusal.TOO_MANY_DEVICES:
        return TooManyDevices(max_devices=MAX_DEVICES_PER_USER)
    if reason is RegistrationRefusal.ORGANISATION_INACTIVE:
        return OrganisationInactive()
    if reason is RegistrationRefusal.SAME_ACCOUNT_KEY:
        return InvalidRequest(
            "this account key is already the number's: an enrolment creates a new account "
            "identity, so generate a new account key")
    # CODE_CONSUMED (a concurrent verify won) and NOT_DECLARED (deleted, or
    # never declared and the code guessed) look like any other failed check.
    return VerificationFailed()
