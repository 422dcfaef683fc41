"""What the API and the console share: callers from tokens or cookies, CSRF, bounded
bodies, security headers, and store errors turned into HTTP answers."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from enrolment.errors import InvalidPhoneNumber, InvalidRequest, OrganisationInactive
from enrolment.web.auth import BUSY_RETRY_AFTER_S, PasswordHashingBusy, same_secret
from enrolment.web.service import (
    AdminService,
    Caller,
    Forbidden,
    PasswordChangeRequired,
    TooManyGuesses,
)
from storage.admin_records import AdminSession, ReductionBelowDeclared
from storage.base import AlreadyExists, NotFound, SeatLimitReached

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "MAX_CSV_BODY_BYTES",
    "MAX_JSON_BODY_BYTES",
    "SECURITY_HEADERS",
    "SESSION_COOKIE",
    "ApiError",
    "Authenticated",
    "authenticate",
    "client_address",
    "error_response",
    "json_endpoint",
    "limit_refusal",
    "read_body",
    "read_json",
    "translate_error",
]

SESSION_COOKIE = "__Host-cryptopass_session"
"""The __Host- prefix makes browsers insist on Secure, Path=/ and no Domain."""
CSRF_HEADER = "x-csrf-token"
"""Header carrying the session's CSRF token on API calls made with the session cookie."""
CSRF_FIELD = "csrf_token"
"""Form field carrying it on console forms."""
MAX_JSON_BODY_BYTES = 16 * 1024
"""API request bodies are a phone number or a count: a few bytes."""
MAX_CSV_BODY_BYTES = 1024 * 1024
"""A CSV import of the largest licence (10 000 numbers of ~20 bytes) with room to spare."""

_SAFE_METHODS = frozenset({"GET", "HEAD"})


class ApiError(Exception):
    """An answer other than success: HTTP status, stable code, readable message, and for a
    limited client the seconds to wait (``Retry-After``)."""

    def __init__(self, status: int, code: str, message: str, *,
                 retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        """``Retry-After`` when there is a time to wait."""
        return {} if self.retry_after_s is None else {"retry-after": str(self.retry_after_s)}


@dataclass(frozen=True, kw_only=True, slots=True)
class Authenticated:
    caller: Caller
    session: AdminSession | None
    """The console session, when the caller came with the session cookie."""


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


async def authenticate(request: Request, service: AdminService, *,
                       form_csrf: str | None = None,
                       changing_password: bool = False) -> Authenticated:
    """Resolve the caller from ``Authorization: Bearer`` or the session cookie.

    A state-changing request made with the cookie must echo the session's CSRF token in the
    ``X-CSRF-Token`` header or, from a console form, in ``form_csrf``. A session opened with
    a one-time password is refused unless ``changing_password`` (the pages that change it).

    Raises ApiError 401 (no or unknown credentials) or 403 (CSRF), PasswordChangeRequired.
    """
    address = client_address(request)
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "unauthenticated", "use Authorization: Bearer <token>")
        caller = await service.token_caller(token.strip(), address=address)
        if caller is None:
            raise ApiError(401, "unauthenticated", "unknown or revoked token")
        return Authenticated(session=None, caller=caller)
    cookie = request.cookies.get(SESSION_COOKIE)
    session = await service.session(cookie) if cookie else None
    if session is None:
        raise ApiError(401, "unauthenticated", "log in, or use an API token")
    if request.method not in _SAFE_METHODS:
        given = request.headers.get(CSRF_HEADER) or form_csrf or ""
        if not same_secret(session.csrf_token, given):
            raise ApiError(403, "csrf", "the form is stale or forged: reload the page")
    return Authenticated(session=session, caller=service.session_caller(
        session, address=address, changing_password=changing_password))


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (422, before reading it all) anything over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ApiError(422, "too_large", f"the request body exceeds {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(422, "too_large", f"the request body exceeds {limit} bytes")
    return bytes(body)


async def read_json(request: Request) -> dict[str, Any]:
    """A JSON object body, or ApiError 422."""
    try:
        value = json.loads(await read_body(request, MAX_JSON_BODY_BYTES))
    except ValueError as error:
        raise ApiError(422, "invalid_json", "the body is not JSON") from error
    if not isinstance(value, dict):
        raise ApiError(422, "invalid_json", "the body must be a JSON object")
    return value


def limit_refusal(error: TooManyGuesses | PasswordHashingBusy) -> ApiError:
    """A password guess refused by the guess budget (429) or while the hashing threads are
    busy (503), with its ``Retry-After`` in whole seconds."""
    if isinstance(error, TooManyGuesses):
        return ApiError(429, "rate_limited", str(error),
                        retry_after_s=max(1, -(-error.retry_after_ms // 1000)))
    return ApiError(503, "busy", str(error), retry_after_s=BUSY_RETRY_AFTER_S)


def translate_error(error: Exception) -> ApiError | None:
    """A deliberate refusal as an ApiError; None for anything else (a bug: 500)."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, Forbidden):
        return ApiError(403, "forbidden", str(error))
    if isinstance(error, PasswordChangeRequired):
        return ApiError(403, "password_change_required", str(error))
    if isinstance(error, TooManyGuesses | PasswordHashingBusy):
        return limit_refusal(error)
    if isinstance(error, NotFound):
        return ApiError(404, "not_found", str(error))
    if isinstance(error, SeatLimitReached):
        return ApiError(409, "seat_limit", f"{error}: delete a user or add seats first")
    if isinstance(error, ReductionBelowDeclared):
        return ApiError(409, "reduction_below_declared", str(error))
    if isinstance(error, AlreadyExists):
        return ApiError(409, "already_exists", str(error))
    if isinstance(error, OrganisationInactive):
        return ApiError(409, "organisation_suspended", str(error))
    if isinstance(error, InvalidPhoneNumber):
        return ApiError(422, "invalid_phone", str(error))
    if isinstance(error, InvalidRequest):
        return ApiError(422, "invalid_request", str(error))
    return None


def error_response(error: ApiError) -> Response:
    return JSONResponse({"error": error.code, "message": error.message},
                        status_code=error.status, headers=error.headers())


def json_endpoint(handler: Callable[[Request], Awaitable[Response]]
                  ) -> Callable[[Request], Awaitable[Response]]:
    """Wrap an API handler: deliberate refusals become ``{"error", "message"}`` answers."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as error:
            translated = translate_error(error)
            if translated is None:
                raise
            return error_response(translated)

    return endpoint


SECURITY_HEADERS = {
    # Our pages load nothing from elsewhere and run no inline script.
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "strict-transport-security": "max-age=31536000",
    "cache-control": "no-store",
}

