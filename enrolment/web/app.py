"""The admin Starlette application: the API, the console, and security headers on every answer."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enrolment.web.api import api_routes
from enrolment.web.console import console_routes
from enrolment.web.http import SECURITY_HEADERS, ApiError, error_response
from enrolment.web.service import AdminService

__all__ = ["admin_app"]


class _SecurityHeaders:
    """Adds ``SECURITY_HEADERS`` to every HTTP answer that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._headers = [(name.encode(), value.encode())
                         for name, value in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *(header for header in self._headers
                                        if header[0] not in present)]
            await send(message)

        await self._app(scope, receive, send_with_headers)


_API_PREFIX = "/api/"


def _api_fallback(api: list[Route]) -> Route:
    """After every API route: any other path under /api/ answers the API's own JSON error,
    404, or 405 for an endpoint's path with a method it does not take."""

    async def refuse(request: Request) -> Response:
        if any(route.matches(request.scope)[0] is Match.PARTIAL for route in api):
            return error_response(ApiError(405, "method_not_allowed",
                                           f"this endpoint does not take {request.method}"))
        return error_response(ApiError(404, "not_found", "no such API endpoint"))

    return Route(_API_PREFIX + "{path:path}", refuse,
                 methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])


def admin_app(service: AdminService) -> ASGIApp:
    """The whole admin site over ``service`` (whose store counts password guesses)."""
    api = api_routes(service)
    return _SecurityHeaders(Starlette(routes=[*api, _api_fallback(api),
                                              *console_routes(service)]))
