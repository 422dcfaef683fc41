"""The admin Starlette application: the API, the console, and security headers on every answer."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enrolment.web.api import api_routes
from enrolment.web.console import console_routes
from enrolment.web.http import SECURITY_HEADERS
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


def admin_app(service: AdminService) -> ASGIApp:
    """The whole admin site over ``service`` (whose store counts password guesses)."""
    routes = [*api_routes(service), *console_routes(service)]
    return _SecurityHeaders(Starlette(routes=routes))
