"""Enrolment by SMS code: request a code for a number, then trade it for a new account identity
(an account key, its first signed device list, and the one device on it).

An attacker must not learn from ``start`` whether a number is declared: a
declared and an undeclared number get the same answer, the same exceptions,
the same rate limit and the same store work; only the SMS differs, and it is
sent in the background (see ``enrolment.sms``).

Every request is counted against its source address and, per number, against that address
and the number itself (``enrolment.limits``, ``enrolment.codes``): one client can neither flood
the relay with numbers nor, alone, spend a number's codes or checks and lock its owner out.
The caller counts per connection (``Allowance``), before it asks.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Protocol

import nacl.bindings

from crypto.device_list import DeviceListError, decode_device_list
from enrolment.codes import (
    CODE_TTL_MS,
    GUESS_WINDOW_MS,
    MAX_CHECKS_PER_CODE,
    MAX_DEVICES_PER_USER,
    MAX_GUESSES_PER_NUMBER_PER_DAY,
    MAX_SENDS_PER_NUMBER_PER_DAY,
    SECRET_BYTES,
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
from enrolment.limits import (
    ADDRESS_PERIOD_MS,
    ENROL_STARTS_PER_ADDRESS_PER_NUMBER,
    GUESSES_PER_ADDRESS_PER_NUMBER,
    PER_NUMBER_PERIOD_MS,
    EnrolmentLimits,
    refill_wait_ms,
)
from enrolment.numbers import parse_phone
from enrolment.sms import SmsDispatcher, SmsMessage, utc_timestamp
from storage.base import (
    Directory,
    EnrolmentStore,
    RateLimits,
    Registration,
    RegistrationRefusal,
    RegistrationRefused,
)
from storage.records import GuessBudgetSpent

__all__ = [
    "FIRST_DEVICE_LIST_VERSION",
    "IDENTITY_KEY_BYTES",
    "REENROLMENT_REVOKE_REASON",
    "EnrolmentService",
    "EnrolmentServiceStore",
]

IDENTITY_KEY_BYTES = 32
"""Size of an Ed25519 public key."""

REENROLMENT_REVOKE_REASON = "this number was enrolled on another device"
"""What a device revoked by a new enrolment of its number is told (``RevokedDevice.reason``)."""

FIRST_DEVICE_LIST_VERSION = 1
"""The version of a new account's first device list, signed by its enrolling device."""

_CODE_TTL_MINUTES = CODE_TTL_MS // 60_000


class EnrolmentServiceStore(EnrolmentStore, Directory, RateLimits, Protocol):
    """What enrolment needs of the store: codes and registration, the directory look-up that
    decides whether an SMS leaves, and the token buckets of the limits per address."""


class EnrolmentService:
    """Sends verification codes and registers devices against them."""

    def __init__(
        self,
        store: EnrolmentServiceStore,
        dispatcher: SmsDispatcher,
        *,
        secret: bytes,
        limits: EnrolmentLimits | None = None,
        randbelow: Callable[[int], int] = secrets.randbelow,
    ) -> None:
        """``secret`` is the relay's enrolment secret (``relay.enrolment_secret``): every node
        of a cluster must be given the same, so that a code sent by one verifies on another."""
        if len(secret) < SECRET_BYTES:
            raise ValueError(f"the enrolment secret must have at least {SECRET_BYTES} bytes")
        self._store = store
        self._dispatcher = dispatcher
        self._secret = secret
        self._limits = EnrolmentLimits() if limits is None else limits
        self._randbelow = randbelow

    async def start(self, phone_text: str, now: int, *, address: str) -> None:
        """Send a verification code to ``phone_text`` if it is declared.

        Returns the same way whether or not the number is declared. ``address`` is the
        rate-limit key of the request's source address (an IPv4 address, an IPv6 /64).

        Raises:
            InvalidPhoneNumber: the text is not a valid international number (nothing is
                counted).
            RateLimited: the address made ``EnrolmentLimits.starts_per_address`` requests in
                the last ``ADDRESS_PERIOD_MS``, or ``ENROL_STARTS_PER_ADDRESS_PER_NUMBER`` for
                this number in ``PER_NUMBER_PERIOD_MS``; or ``MAX_SENDS_PER_NUMBER_PER_DAY``
                codes were already requested for the number in the last ``SEND_WINDOW_MS``.
        """
        phone = parse_phone(phone_text)
        limits = self._limits
        await self._take(f"enrol start {address}", limits.starts_per_address, ADDRESS_PERIOD_MS,
                         now, "too many enrolment requests from this address")
        key = phone_key(self._secret, phone)
        await self._take(f"enrol start {address} {key.hex()}",
                         ENROL_STARTS_PER_ADDRESS_PER_NUMBER, PER_NUMBER_PERIOD_MS, now,
                         "too many codes were requested for this number from this address")
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
            # The window's end, not the oldest send's: when others asked for this number's
            # codes is none of this requester's business.
            raise RateLimited("too many codes were requested for this number",
                              retry_after_ms=SEND_WINDOW_MS)
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
                     device_list: bytes, now: int, *, address: str) -> Registration:
        """Create a new account identity for the number, with one device, if ``code`` is the
        pending one.

        ``account_key`` is the new account's Ed25519 key and ``device_list`` its first device
        list (``crypto.device_list``): version 1, signed by ``account_key``, listing
        ``identity_key`` only. The number's earlier devices, if any, are revoked with
        ``REENROLMENT_REVOKE_REASON`` (``Registration.revoked``). Every well-formed call while
        a code is pending uses one of the code's ``MAX_CHECKS_PER_CODE`` checks and one of
        the number's ``MAX_GUESSES_PER_NUMBER_PER_DAY``, which a new code does not give back;
        a successful one consumes the code. ``address`` is as for ``start``.

        Raises:
            InvalidPhoneNumber: the text is not a valid international number.
            InvalidRequest: the code is not 6 digits, a key is not an Ed25519 public key, or
                the list is not the new account's first list of this one device (nothing is
                counted); or ``account_key`` is already the number's (one check is counted,
                the code stays pending).
            RateLimited: the address made ``EnrolmentLimits.verifies_per_address`` requests
                in the last ``ADDRESS_PERIOD_MS``, or ``GUESSES_PER_ADDRESS_PER_NUMBER`` for
                this number in ``PER_NUMBER_PERIOD_MS``; or the number's guesses are used up
                for its ``GUESS_WINDOW_MS`` (nothing else is counted).
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
        await self._take(f"enrol verify {address}", self._limits.verifies_per_address,
                         ADDRESS_PERIOD_MS, now,
                         "too many verification requests from this address")
        key = phone_key(self._secret, phone)
        await self._take(f"enrol verify {address} {key.hex()}", GUESSES_PER_ADDRESS_PER_NUMBER,
                         PER_NUMBER_PERIOD_MS, now,
                         "too many verification attempts for this number from this address")
        try:
            pending_hash = await self._store.take_verification_attempt(
                phone_key=key, now=now, max_attempts=MAX_CHECKS_PER_CODE,
                guess_window_ms=GUESS_WINDOW_MS, max_guesses=MAX_GUESSES_PER_NUMBER_PER_DAY)
        except GuessBudgetSpent as spent:
            raise RateLimited(
                f"too many verification attempts for this number (at most "
                f"{MAX_GUESSES_PER_NUMBER_PER_DAY} a day, whichever code they check)",
                retry_after_ms=spent.resume_at - now) from spent
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

    async def forget_old_records(self, now: int, *, limit: int) -> int:
        """Delete up to ``limit`` each of the expired codes and of the sends and guesses too
        old to count (the relay's sweeper calls it); return the rows deleted."""
        return await self._store.forget_enrolment_records(
            now=now, send_window_ms=SEND_WINDOW_MS, guess_window_ms=GUESS_WINDOW_MS,
            limit=limit)

    async def _take(self, key: str, capacity: int, period_ms: int, now: int,
                    refusal: str) -> None:
        """Take a token from the bucket ``key``, or raise RateLimited saying ``refusal``."""
        if not await self._store.take_tokens(key=key, cost=1, capacity=capacity,
                                             period_ms=period_ms, now=now):
            raise RateLimited(refusal, retry_after_ms=refill_wait_ms(capacity, period_ms))


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
