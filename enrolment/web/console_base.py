"""The console's plumbing: sessions required, forms read and CSRF-checked, refusals shown on a
page that keeps the navigation, and redirects that carry a signed notice."""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from enrolment.web.console_text import notice_of, with_notice
from enrolment.web.http import (
    CSRF_FIELD,
    MAX_JSON_BODY_BYTES,
    ApiError,
    Authenticated,
    authenticate,
    read_body,
    translate_error,
)
from enrolment.web.service import AdminService, Forbidden, PasswordChangeRequired
from enrolment.web.templates import render
from storage.admin_records import AccountRole
from storage.base import Organisation

__all__ = ["CONFIRM_FIELD", "OFFERS", "ConsoleBase", "Handler", "page", "read_form",
           "see_other"]

CONFIRM_FIELD = "confirm"
"""A destructive action's form field: it acts only when the field says ``yes`` (sent by its
confirmation page); without it the console shows that page instead."""

OFFERS = {"monthly": "Monthly, without commitment", "annual_commitment": "12-month commitment"}

_HEADINGS = {403: "Not allowed", 404: "Not found", 409: "Refused", 422: "Not accepted",
             429: "Too many attempts", 503: "Busy"}

Handler = Callable[[Request], Awaitable[Response]]


async def read_form(request: Request, limit: int = MAX_JSON_BODY_BYTES) -> dict[str, str]:
    """A url-encoded form body of at most ``limit`` bytes (ApiError 422 otherwise)."""
    body = await read_body(request, limit)
    try:
        pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError) as error:
        raise ApiError(422, "invalid_request", "the form is not valid") from error
    return dict(pairs)


def page(template: str, status: int = 200, **values: Any) -> Response:
    return HTMLResponse(render(template, **values), status_code=status)


def see_other(path: str) -> Response:
    return RedirectResponse(path, status_code=303)


class ConsoleBase:
    def __init__(self, service: AdminService) -> None:
        self.service = service

    def page(self, handler: Callable[[Request, Authenticated], Awaitable[Response]], *,
             form_limit: int = MAX_JSON_BODY_BYTES, changing_password: bool = False) -> Handler:
        """Wrap a page: a session is required (else to the login page); forms are read,
        CSRF-checked and handed over in ``request.state.form``; refusals shown on a page
        with the navigation. A session that must change its one-time password goes to the
        Account page, unless ``changing_password`` (the pages it may use)."""

        async def endpoint(request: Request) -> Response:
            who: Authenticated | None = None
            try:
                form: dict[str, str] = {}
                if request.method == "POST":
                    form = await read_form(request, form_limit)
                request.state.form = form
                try:
                    who = await authenticate(request, self.service,
                                             form_csrf=form.get(CSRF_FIELD),
                                             changing_password=changing_password)
                except ApiError as error:
                    if error.status == 401:
                        return see_other("/login")
                    raise
                except PasswordChangeRequired:
                    return see_other("/account")
                if who.session is None:  # a bearer token is for the API, not the console
                    return see_other("/login")
                return await handler(request, who)
            except Exception as error:
                refusal = translate_error(error)
                if refusal is None:
                    raise
                return await self.refused(request, who, refusal)

        return endpoint

    async def refused(self, request: Request, who: Authenticated | None,
                      refusal: ApiError) -> Response:
        """The refusal on a page of its own, with the navigation when the caller is known."""
        values = await self.values(request, who) if who is not None else {}
        values.pop("message", None)
        response = page("error", status=refusal.status, error=refusal.message,
                        heading=_HEADINGS.get(refusal.status, "Refused"), **values)
        response.headers.update(refusal.headers())
        return response

    async def values(self, request: Request, who: Authenticated,
                     org: Organisation | None = None) -> dict[str, Any]:
        """What every page of a session shows: the navigation (an organisation
        administrator's own organisation on every page), the CSRF token, and the notice
        the redirect carried, if its signature is this session's."""
        assert who.session is not None
        operator = who.caller.role is AccountRole.OPERATOR
        nav_org = None if org is None else org.name
        if nav_org is None and not operator:
            own = await self.service.organisations(who.caller)
            nav_org = own[0].name if own else None
        return {"account": who.session.account, "csrf": who.session.csrf_token, "org": org,
                "operator": operator, "offers": OFFERS, "nav_org": nav_org,
                "here": request.url.path,
                "message": notice_of(dict(request.query_params),
                                     key=who.session.csrf_token)}

    @staticmethod
    def done(who: Authenticated, path: str, notice: str) -> Response:
        """After a change: to ``path``, which shows ``notice``."""
        assert who.session is not None
        return see_other(with_notice(path, notice, key=who.session.csrf_token))

    @staticmethod
    def confirmed(request: Request) -> bool:
        return bool(request.state.form.get(CONFIRM_FIELD) == "yes")

    @staticmethod
    def require_operator(who: Authenticated) -> None:
        if who.caller.role is not AccountRole.OPERATOR:
            raise Forbidden("only an operator may do this")

    async def confirmation(self, request: Request, who: Authenticated, org: Organisation, *,
                           title: str, consequences: list[str], button: str, back: str,
                           action: str | None = None,
                           fields: tuple[tuple[str, str], ...] = ()) -> Response:
        """The page that names what a destructive action will do; its form posts the
        action with ``CONFIRM_FIELD``, to ``action`` (this page's own path by default)."""
        return page("confirm", title=title, consequences=consequences, button=button,
                    back=back, action=action or request.url.path, fields=fields,
                    **await self.values(request, who, org))
