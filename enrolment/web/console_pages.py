"""The console's pages that only read (and the login): organisations, dashboard, users, one
user, licence, audit log; ``console`` adds the changes."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from enrolment.web.auth import PasswordHashingBusy, new_secret, same_secret
from enrolment.web.console_base import ConsoleBase, page, read_form, see_other
from enrolment.web.console_css import CSS
from enrolment.web.console_text import AUDIT_ACTIONS
from enrolment.web.http import (
    CSRF_FIELD,
    SESSION_COOKIE,
    ApiError,
    Authenticated,
    client_address,
    limit_refusal,
)
from enrolment.web.service import OneTimePasswordUsed, TooManyGuesses, UserView
from storage.admin_records import AccountRole
from storage.base import NotFound

__all__ = ["LOGIN_COOKIE", "MAX_EMAIL_CHARS", "SESSION_LIFETIME_MS", "ConsolePages",
           "login_routes"]

SESSION_LIFETIME_MS = 8 * 60 * 60 * 1000
"""A console session lasts a working day (8 hours), then the administrator logs in again."""
LOGIN_COOKIE = "__Host-cryptopass_login"
"""Holds the login form's CSRF token until the login succeeds."""
LOGIN_TOKEN_CHARS = len(new_secret())
"""Length of the login form's token (``new_secret``): a cookie of another length is not one."""
MAX_EMAIL_CHARS = 254
"""RFC 5321's limit on a forward path."""
DASHBOARD_AUDIT_ENTRIES = 5
"""Latest audit entries on the dashboard (the audit page shows more)."""

_LABELS = dict(AUDIT_ACTIONS)
_STATES = (("active", "active"), ("suspended", "suspended (disconnects every user)"),
           ("terminated", "terminated (removes every user, asks to confirm)"))


def _session_cookie(response: Response, name: str, value: str, max_age_s: int) -> None:
    response.set_cookie(name, value, max_age=max_age_s, path="/", secure=True, httponly=True,
                        samesite="strict")


class ConsolePages(ConsoleBase):
    def render(self, template: str, status: int = 200, **values: Any) -> Response:
        return page(template, status, **values)

    # -- login -------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        # The token of an earlier form, if any, so that a second tab (or a request the
        # browser makes on its own, such as /favicon.ico) does not make the first stale.
        token = request.cookies.get(LOGIN_COOKIE, "")
        if len(token) != LOGIN_TOKEN_CHARS:
            token = new_secret()
        response = page("login", csrf=token)
        _session_cookie(response, LOGIN_COOKIE, token, max_age_s=3600)
        return response

    async def login(self, request: Request) -> Response:
        try:
            form = await read_form(request)
        except ApiError as error:
            return page("login", status=error.status, error=error.message, csrf="")
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not same_secret(expected, form.get(CSRF_FIELD, "")):
            return page("login", status=403, csrf="",
                        error="the form is stale or forged: reload the page")
        email = form.get("email", "").strip().lower()[:MAX_EMAIL_CHARS]
        try:
            opened = await self.service.log_in(email, form.get("password", ""),
                                               address=client_address(request),
                                               lifetime_ms=SESSION_LIFETIME_MS)
        except (TooManyGuesses, PasswordHashingBusy) as error:
            refusal = limit_refusal(error)
            response = page("login", status=refusal.status, csrf=expected, email=email,
                            error=refusal.message)
            response.headers.update(refusal.headers())
            return response
        except OneTimePasswordUsed as error:
            return page("login", status=401, csrf=expected, email=email, error=str(error))
        if opened is None:
            return page("login", status=401, csrf=expected, email=email,
                        error="wrong email or password")
        response = see_other("/account" if opened.must_change_password else "/")
        _session_cookie(response, SESSION_COOKIE, opened.cookie, SESSION_LIFETIME_MS // 1000)
        response.delete_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True,
                               samesite="strict")
        return response

    async def logout(self, request: Request, who: Authenticated) -> Response:
        assert who.session is not None
        await self.service.log_out(who.session)
        response = see_other("/login")
        response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True,
                               samesite="strict")
        return response

    # -- pages -------------------------------------------------------------------------

    async def home(self, request: Request, who: Authenticated) -> Response:
        organisations = await self.service.organisations(who.caller)
        if who.caller.role is not AccountRole.OPERATOR:  # its own organisation, if any
            return see_other(f"/orgs/{organisations[0].name}" if organisations
                             else "/account")
        return self.render("organisations", organisations=organisations,
                           **await self.values(request, who))

    async def not_found(self, request: Request, who: Authenticated) -> Response:
        raise NotFound("there is no such page")

    async def dashboard(self, request: Request, who: Authenticated) -> Response:
        name = request.path_params["org"]
        org = await self.service.organisation(who.caller, name)
        licence, reductions = await self.service.licence(who.caller, name)
        declared, enrolled = await self.service.seat_use(who.caller, name)
        entries = await self.service.audit(who.caller, name, limit=DASHBOARD_AUDIT_ENTRIES)
        operator = who.caller.role is AccountRole.OPERATOR
        cross = await self.service.cross_organisation(who.caller, name) if operator else True
        return self.render("dashboard", licence=licence, reductions=reductions,
                           declared=declared, enrolled=enrolled, entries=entries,
                           labels=_LABELS, states=_STATES, cross_organisation=cross,
                           **await self.values(request, who, org))

    async def users(self, request: Request, who: Authenticated, *, status: int = 200,
                    error: str | None = None, entered: dict[str, str] | None = None
                    ) -> Response:
        name = request.path_params["org"]
        org = await self.service.organisation(who.caller, name)
        search = request.query_params.get("q", "")[:64]
        views = await self.service.list_users(who.caller, name, search=search)
        declared = (await self.service.declared_count(who.caller, name) if search
                    else len(views))
        return self.render("users", status=status, error=error, entered=entered or {},
                           users=[view.as_json() for view in views], search=search,
                           declared=declared, seats=org.seats,
                           **await self.values(request, who, org))

    async def export_users(self, request: Request, who: Authenticated) -> Response:
        text = await self.service.export_csv(who.caller, request.path_params["org"])
        return Response(text, media_type="text/csv; charset=utf-8", headers={
            "content-disposition": 'attachment; filename="users.csv"'})

    async def user(self, request: Request, who: Authenticated, *, status: int = 200,
                   error: str | None = None, entered: dict[str, str] | None = None
                   ) -> Response:
        name = request.path_params["org"]
        org = await self.service.organisation(who.caller, name)
        view: UserView = await self.service.get_user(who.caller, name,
                                                     request.path_params["phone"])
        return self.render("user", status=status, error=error, entered=entered or {},
                           user=view.as_json(), **await self.values(request, who, org))

    async def licence(self, request: Request, who: Authenticated, *, status: int = 200,
                      error: str | None = None, entered: dict[str, str] | None = None
                      ) -> Response:
        name = request.path_params["org"]
        org = await self.service.organisation(who.caller, name)
        licence, reductions = await self.service.licence(who.caller, name)
        declared = await self.service.declared_count(who.caller, name)
        return self.render("licence", status=status, error=error, entered=entered or {},
                           licence=licence, reductions=reductions, declared=declared,
                           **await self.values(request, who, org))

    async def audit(self, request: Request, who: Authenticated) -> Response:
        name = request.path_params["org"]
        org = await self.service.organisation(who.caller, name)
        action = request.query_params.get("action", "")[:64]
        subject = request.query_params.get("subject", "")[:64]
        entries = await self.service.audit(who.caller, name, action=action or None,
                                           subject=subject or None)
        return self.render("audit", entries=entries, action=action, subject=subject,
                           actions=AUDIT_ACTIONS, labels=_LABELS,
                           **await self.values(request, who, org))


async def _stylesheet(request: Request) -> Response:
    return Response(CSS, media_type="text/css", headers={"cache-control": "max-age=3600"})


async def _no_icon(request: Request) -> Response:
    return Response(status_code=404)


def login_routes(console: ConsolePages) -> list[Route]:
    """The stylesheet, logging in and out."""
    return [
        Route("/static/console.css", _stylesheet),
        Route("/favicon.ico", _no_icon),
        Route("/login", console.login_form, methods=["GET"]),
        Route("/login", console.login, methods=["POST"]),
        Route("/logout", console.page(console.logout, changing_password=True),
              methods=["POST"]),
    ]

