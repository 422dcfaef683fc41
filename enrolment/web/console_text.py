"""What the console says besides its pages: signed notices, readable times, action names.

A notice ("user added") is carried to the page after the redirect in the query string,
signed with the session's CSRF token (HMAC-SHA256): a link made by anyone else (who does not
know that token) shows nothing, and whatever is shown is HTML-escaped by the templates.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import urllib.parse

__all__ = [
    "AUDIT_ACTIONS",
    "MAX_NOTICE_CHARS",
    "day_text",
    "moment_text",
    "notice_of",
    "with_notice",
]

MAX_NOTICE_CHARS = 200
"""Longest notice carried by a redirect (one sentence naming one number or count)."""
_SIGNATURE_BYTES = 16
"""A truncated HMAC-SHA256 (128 bits): forging one for someone else's session is out of reach."""

AUDIT_ACTIONS: tuple[tuple[str, str], ...] = (
    ("user.declare", "User added"),
    ("user.delete", "User deleted"),
    ("user.erase", "User erased"),
    ("user.read", "User's details viewed"),
    ("personal_data.read", "Personal data exported"),
    ("device.revoke", "Device revoked by an administrator"),
    ("device.revoked_by_new_enrolment", "Device revoked by a new enrolment"),
    ("device.link", "Device linked by the user"),
    ("device.remove", "Device removed by the user"),
    ("licence.reduce", "Seat reduction requested"),
    ("licence.add", "Seats added"),
    ("licence.terms", "Offer or contract start set"),
    ("organisation.create", "Organisation created"),
    ("organisation.active", "Organisation made active"),
    ("organisation.suspended", "Organisation suspended"),
    ("organisation.terminated", "Organisation terminated"),
    ("policy.cross_organisation", "Cross-organisation policy set"),
    ("account.create", "Administrator account created"),
    ("account.password", "Password changed"),
    ("account.password_reset", "Password reset by an operator"),
    ("token.create", "API token created"),
    ("token.revoke", "API token revoked"),
)
"""Every action code the audit log holds (docs/ADMIN_API.md, "Audit log"), with its name in
the console's filter."""


def _signature(key: str, text: str) -> str:
    digest = hmac.new(key.encode(), b"notice:" + text.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:_SIGNATURE_BYTES]).decode().rstrip("=")


def with_notice(path: str, text: str, *, key: str) -> str:
    """``path`` carrying ``text`` (cut to MAX_NOTICE_CHARS) signed with ``key``."""
    text = text[:MAX_NOTICE_CHARS]
    query = urllib.parse.urlencode({"notice": text, "sig": _signature(key, text)})
    return f"{path}?{query}"


def notice_of(query: dict[str, str], *, key: str) -> str | None:
    """The notice of a query made by ``with_notice`` with the same ``key``, else None."""
    text, signature = query.get("notice", ""), query.get("sig", "")
    if not text or len(text) > MAX_NOTICE_CHARS:
        return None
    if not hmac.compare_digest(_signature(key, text).encode(), signature.encode()):
        return None
    return text


def _local(ms: int) -> datetime.datetime:
    # The relay's own time zone (its TZ environment variable): operators set it to where the
    # administrators are; the zone's name is printed with every time.
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).astimezone()


def moment_text(ms: int) -> tuple[str, str]:
    """(machine-readable UTC, readable local time with its zone) of a time in ms."""
    moment = _local(ms)
    machine = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat(
        timespec="seconds").replace("+00:00", "Z")
    return machine, f"{moment.day} {moment:%b %Y, %H:%M} {moment.tzname()}"


def day_text(day: str | datetime.date | None) -> str:
    """A day (ISO text or date) as ``18 Jan 2026``; empty for None."""
    if day is None:
        return ""
    found = day if isinstance(day, datetime.date) else datetime.date.fromisoformat(day)
    return f"{found.day} {found:%b %Y}"
