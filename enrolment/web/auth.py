"""Passwords, opaque secrets and the login rate limit of the admin console.

Passwords are hashed with Argon2id (argon2-cffi's defaults, RFC 9106's second recommended
option). Session cookies, CSRF tokens, API tokens and one-time passwords are drawn from
``secrets``; only the SHA-256 of a session cookie or an API token is stored, which is enough
because they carry 256 bits of entropy (no dictionary to attack, unlike a password).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import deque

import argon2

__all__ = [
    "API_TOKEN_PREFIX",
    "LOGIN_FAILURES_ALLOWED",
    "LOGIN_WINDOW_MS",
    "MAX_PASSWORD_CHARS",
    "MIN_PASSWORD_CHARS",
    "LoginRateLimiter",
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
LOGIN_FAILURES_ALLOWED = 5
"""Failed logins per email and per address within LOGIN_WINDOW_MS before refusing."""
LOGIN_WINDOW_MS = 15 * 60 * 1000
"""Window of the login rate limit (15 minutes)."""
MAX_TRACKED_LOGIN_KEYS = 100_000
"""Emails and addresses remembered by the limiter: bounds its memory under a spray attack."""

_hasher = argon2.PasswordHasher()  # Argon2id by default


def hash_password(password: str) -> str:
    """Argon2id hash in PHC string form."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether ``password`` matches; never raises for a wrong or malformed hash."""
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


class LoginRateLimiter:
    """Failed logins per key (an email, an address) in a sliding window; one per process.

    Counts failures only: an administrator who logs in right is never slowed down.
    """

    def __init__(self, *, failures_allowed: int = LOGIN_FAILURES_ALLOWED,
                 window_ms: int = LOGIN_WINDOW_MS) -> None:
        self._failures_allowed = failures_allowed
        self._window_ms = window_ms
        self._failures: dict[str, deque[int]] = {}

    def _recent(self, key: str, now: int) -> deque[int]:
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self._window_ms:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures

    def allowed(self, keys: list[str], now: int) -> bool:
        """Whether another attempt may be checked for all of ``keys``."""
        return all(len(self._recent(key, now)) < self._failures_allowed for key in keys)

    def failed(self, keys: list[str], now: int) -> None:
        for key in keys:
            if key not in self._failures and len(self._failures) >= MAX_TRACKED_LOGIN_KEYS:
                self._failures.pop(next(iter(self._failures)))  # forget the oldest key
            self._failures.setdefault(key, deque()).append(now)
