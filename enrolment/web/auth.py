"""Passwords, opaque secrets and the password-guess budget of the admin console.

Passwords are hashed with Argon2id (argon2-cffi's defaults, RFC 9106's second recommended
option). One hash takes 100 to 150 ms of a core: ``PasswordHashing`` computes them in worker
threads, a bounded number at once, so that the relay's event loop (which the admin site
shares) never waits for one. Guesses at a password are counted per email and per address
in the store (``guess_keys``), before the password is checked.

Session cookies, CSRF tokens, API tokens and one-time passwords are drawn from ``secrets``;
only the SHA-256 of a session cookie or an API token is stored, which is enough because they
carry 256 bits of entropy (no dictionary to attack, unlike a password).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sys
from types import TracebackType

import argon2
import trio

from transport.addresses import address_scope as network_scope

__all__ = [
    "API_TOKEN_PREFIX",
    "BUSY_RETRY_AFTER_S",
    "IPV6_GUESS_PREFIX",
    "MAX_PASSWORD_CHARS",
    "MAX_PASSWORD_HASHING_THREADS",
    "MAX_PENDING_PASSWORD_CHECKS",
    "MIN_PASSWORD_CHARS",
    "PASSWORD_GUESSES_ALLOWED",
    "PASSWORD_GUESS_WINDOW_MS",
    "PASSWORD_HASHING_THREADS",
    "PasswordHashing",
    "PasswordHashingBusy",
    "address_scope",
    "guess_keys",
    "hash_password",
    "new_api_token",
    "new_one_time_password",
    "new_secret",
    "same_secret",
    "secret_hash",
    "spend_verification_time",
    "verify_password",
]

MIN_PASSWORD_CHARS = 12
"""Shortest password accepted (NIST SP 800-63B asks at least 8; administrators hold
personal data, so a little more)."""
MAX_PASSWORD_CHARS = 256
"""Longest password hashed: bounds the work one login request can cause."""
SECRET_BYTES = 32
"""Entropy of session cookies, CSRF and API tokens (256 bits)."""
API_TOKEN_PREFIX = "cpr_"  # noqa: S105 (a public prefix, not a secret)
"""Marks our tokens, so that secret scanners and people recognise a leaked one."""
PASSWORD_GUESSES_ALLOWED = 5
"""Password guesses counted per email and per address within PASSWORD_GUESS_WINDOW_MS,
logins and the current password of a change alike; a right password's guess is given back.
Counted before the check, so concurrent requests cannot check more."""
PASSWORD_GUESS_WINDOW_MS = 15 * 60 * 1000
"""Window of the guess budget (15 minutes from its first counted guess)."""
IPV6_GUESS_PREFIX = 64
"""An IPv6 client is counted by its /64: one subscriber commonly holds all of one."""
MAX_PASSWORD_HASHING_THREADS = 2
"""Argon2id hashes computed at once at most, each in a worker thread (100 to 150 ms of a core
and 64 MiB each): a burst of logins queues for them instead of stalling the event loop. Two
check about 15 passwords a second, far more than administrators need."""


def _usable_cores() -> int:
    if sys.platform == "linux":
        return len(os.sched_getaffinity(0))  # the cores this process may run on
    return os.cpu_count() or 1


PASSWORD_HASHING_THREADS = max(1, min(MAX_PASSWORD_HASHING_THREADS, _usable_cores() - 1))
"""The hashing threads of this machine: MAX_PASSWORD_HASHING_THREADS, but never every core
this process may run on (one on two cores), so that the event loop always has a core of its
own while a burst of logins is hashed."""
MAX_PENDING_PASSWORD_CHECKS = 32
"""Requests holding a counted guess that may wait for a hashing thread (about 4 s of work
for one thread, 2 s for two); past it they are refused as busy, so that a spray from many addresses
keeps the queue, its memory and its delay bounded."""
BUSY_RETRY_AFTER_S = 1
"""The retry-after of a request refused because MAX_PENDING_PASSWORD_CHECKS are waiting."""

_hasher = argon2.PasswordHasher()  # Argon2id by default


def hash_password(password: str) -> str:
    """Argon2id hash in PHC string form. Blocks for 100 to 150 ms: on the event loop, use
    ``PasswordHashing.hash``."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether ``password`` matches; never raises for a wrong or malformed hash. Blocks
    like ``hash_password``: on the event loop, use ``PasswordHashing.verify``."""
    try:
        return _hasher.verify(password_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


_DUMMY_HASH = hash_password(secrets.token_urlsafe(SECRET_BYTES))


def spend_verification_time(password: str) -> None:
    """Hash like a real check, for unknown emails: the answer time does not reveal them."""
    verify_password(_DUMMY_HASH, password)


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def new_api_token() -> str:
    return API_TOKEN_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def new_one_time_password() -> str:
    """A first password printed once by the CLI; the administrator changes it."""
    return secrets.token_urlsafe(18)


def secret_hash(value: str) -> bytes:
    """What the store keeps of a session cookie or an API token."""
    return hashlib.sha256(value.encode()).digest()


def same_secret(expected: str, given: str) -> bool:
    """Constant-time comparison (CSRF tokens)."""
    return hmac.compare_digest(expected.encode(), given.encode())


def address_scope(address: str) -> str:
    """What a guess from ``address`` is counted against: the address itself (IPv4, and
    IPv4 mapped into IPv6), or its IPV6_GUESS_PREFIX network for IPv6."""
    return network_scope(address, ipv6_prefix=IPV6_GUESS_PREFIX)


def guess_keys(*, email: str, address: str) -> list[bytes]:
    """The guess-budget keys of one guess at ``email``'s password from ``address``: hashed,
    so that the store never keeps a password typed into the email field in clear."""
    return [secret_hash("email:" + email), secret_hash("address:" + address_scope(address))]


class PasswordHashingBusy(Exception):
    """MAX_PENDING_PASSWORD_CHECKS requests already wait for a hashing thread."""

    def __init__(self) -> None:
        super().__init__(f"the server is busy checking passwords: try again in "
                         f"{BUSY_RETRY_AFTER_S} s")


class _Admission:
    """One request's place among the pending password checks, given back on exit."""

    def __init__(self, hashing: PasswordHashing) -> None:
        self._hashing = hashing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._hashing.pending -= 1


class PasswordHashing:
    """Argon2id in worker threads: at most ``threads`` at once (their
    ``trio.CapacityLimiter``, ``limiter``), for at most ``max_pending`` admitted requests.

    One per ``AdminService`` (so one per relay process): the event loop only hands the work
    over and waits, so every QUIC device goes on being served during a burst of logins.
    """

    def __init__(self, *, threads: int = PASSWORD_HASHING_THREADS,
                 max_pending: int = MAX_PENDING_PASSWORD_CHECKS) -> None:
        self.limiter = trio.CapacityLimiter(threads)
        """The hashing threads' limiter (``trio.to_thread.run_sync``'s ``limiter``)."""
        self.max_pending = max_pending
        self.pending = 0
        """Requests admitted and not done: waiting for a thread, or hashing."""

    def admit(self) -> _Admission:
        """A place among the pending checks, to hold (``with``) while checking and hashing.

        Taken synchronously (no ``await`` between the count and its increment), so
        concurrent requests never exceed ``max_pending``. Raises PasswordHashingBusy.
        """
        if self.pending >= self.max_pending:
            raise PasswordHashingBusy
        self.pending += 1
        return _Admission(self)

    async def hash(self, password: str) -> str:
        """``hash_password`` in a hashing thread."""
        return await trio.to_thread.run_sync(hash_password, password, limiter=self.limiter)

    async def verify(self, password_hash: str, password: str) -> bool:
        """``verify_password`` in a hashing thread."""
        return await trio.to_thread.run_sync(verify_password, password_hash, password,
                                             limiter=self.limiter)

    async def spend_verification_time(self, password: str) -> None:
        """``spend_verification_time`` in a hashing thread (an unknown email)."""
        await trio.to_thread.run_sync(spend_verification_time, password, limiter=self.limiter)
