"""The console: server-rendered pages over the same ``AdminService`` as the API.

Forms post back and are answered with a redirect (so a reload never repeats an action) or,
when refused, with the page and the reason. Every form carries the session's CSRF token; the
login form, made before any session exists, carries a token that must equal a cookie set with
it (double submit). A session opened with a one-time password is sent to the Account page
from every other page until it has changed the password.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from enrolment.errors import InvalidRequest
from enrolment.web.auth import (
    MIN_PASSWORD_CHARS,
    PasswordHashingBusy,
    new_secret,
    same_secret,
)
from enrolment.web.http import (
    CSRF_FIELD,
    MAX_CSV_BODY_BYTES,
    MAX_JSON_BODY_BYTES,
    SESSION_COOKIE,
    ApiError,
    Authenticated,
    authenticate,
    client_address,
    limit_refusal,
    read_body,
    translate_error,
)
from enrolment.web.service import (
    AdminService,
    Forbidden,
    OneTimePasswordUsed,
    PasswordChangeRequired,
    TooManyGuesses,
    UserView,
    audit_json,
)
from enrolment.web.templates import CSS, render
from storage.admin_records import AccountRole
from storage.base import Organisation, OrganisationState

__all__ = ["LOGIN_COOKIE", "SESSION_LIFETIME_MS", "console_routes"]

SESSION_LIFETIME_MS = 8 * 60 * 60 * 1000
"""A console session lasts a working day (8 hours), then the administrator logs in again."""
LOGIN_COOKIE = "__Host-cryptopass_login"
"""Holds the login form's CSRF token until the login succeeds."""
MAX_EMAIL_CHARS = 254
"""RFC 5321's limit on a forward path."""

_OFFERS = {"monthly": "Monthly, without commitment", "annual_commitment": "12-month commitment"}

Handler = Callable[[Request], Awaitable[Response]]


async def _form(request: Request, limit: int = MAX_JSON_BODY_BYTES) -> dict[str, str]:
    body = await read_body(request, limit)
    try:
        pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError) as error:
        raise ApiError(422, "invalid_request", "the form is not valid") from error
    return dict(pairs)


def _page(template: str, status: int = 200, **values: Any) -> Response:
    return HTMLResponse(render(template, **values), status_code=status)


def _see_other(path: str) -> Response:
    return RedirectResponse(path, status_code=303)


def _session_cookie(response: Response, name: str, value: str, max_age_s: int) -> None:
    response.set_cookie(name, value, max_age=max_age_s, path="/", secure=True, httponly=True,
                        samesite="strict")


class _Console:
    def __init__(self, service: AdminService) -> None:
        self.service = service

    # -- plumbing ----------------------------------------------------------------------

    def page(self, handler: Callable[[Request, Authenticated], Awaitable[Response]], *,
             form_limit: int = MAX_JSON_BODY_BYTES, changing_password: bool = False) -> Handler:
        """Wrap a page: a session is required (else to the login page); forms are read,
        CSRF-checked and handed over in ``request.state.form``; refusals shown on a page.
        A session that must change its one-time password goes to the Account page, unless
        ``changing_password`` (the pages it may use)."""

        async def endpoint(request: Request) -> Response:
            try:
                form: dict[str, str] = {}
                if request.method == "POST":
                    form = await _form(request, form_limit)
                request.state.form = form
                try:
                    who = await authenticate(request, self.service,
                                             form_csrf=form.get(CSRF_FIELD),
                                             changing_password=changing_password)
                except ApiError as error:
                    if error.status == 401:
                        return _see_other("/login")
                    raise
                except PasswordChangeRequired:
                    return _see_other("/account")
                if who.session is None:  # a bearer token is for the API, not the console
                    return _see_other("/login")
                return await handler(request, who)
            except Exception as error:
                refusal = translate_error(error)
                if refusal is None:
                    raise
                return _page("base", status=refusal.status, error=refusal.message)

        return endpoint

    def values(self, who: Authenticated, org: Organisation | None = None) -> dict[str, Any]:
        assert who.session is not None
        return {"account": who.session.account, "csrf": who.session.csrf_token, "org": org,
                "operator": who.caller.role is AccountRole.OPERATOR, "offers": _OFFERS}

    # -- login -------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        token = new_secret()
        response = _page("login", csrf=token)
        _session_cookie(response, LOGIN_COOKIE, token, max_age_s=3600)
        return response

    async def login(self, request: Request) -> Response:
        try:
            form = await _form(request)
        except ApiError as error:
            return _page("login", status=error.status, error=error.message, csrf="")
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not same_secret(expected, form.get(CSRF_FIELD, "")):
            return _page("login", status=403, csrf="",
                         error="the form is stale or forged: reload the page")
        email = form.get("email", "").strip().lower()[:MAX_EMAIL_CHARS]
        try:
            opened = await self.service.log_in(email, form.get("password", ""),
                                               address=client_address(request),
                                               lifetime_ms=SESSION_LIFETIME_MS)
        except (TooManyGuesses, PasswordHashingBusy) as error:
            refusal = limit_refusal(error)
            response = _page("login", status=refusal.status, csrf=expected,
                             error=refusal.message)
            response.headers.update(refusal.headers())
            return response
        except OneTimePasswordUsed as error:
            return _page("login", status=401, csrf=expected, error=str(error))
        if opened is None:
            return _page("login", status=401, csrf=expected, error="wrong email or password")
        response = _see_other("/account" if opened.must_change_password else "/")
        _session_cookie(response, SESSION_COOKIE, opened.cookie, SESSION_LIFETIME_MS // 1000)
        response.delete_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True,
                               samesite="strict")
        return response

    async def logout(self, request: Request, who: Authenticated) -> Response:
        assert who.session is not None
        await self.service.log_out(who.session)
        response = _see_other("/login")
        response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True,
                               samesite="strict")
        return response

    # -- pages -------------------------------------------------------------------------

    async def home(self, request: Request, who: Authenticated) -> Response:
        organisations = await self.service.organisations(who.caller)
        if who.caller.role is not AccountRole.OPERATOR:  # its own organisation, if any
            return _see_other(f"/orgs/{organisations[0].name}" if organisations
                              else "/account")
        return _page("organisations", organisations=organisations, **self.values(who))

    async def dashboard(self, request: Request, who: Authenticated) -> Response:
        name = request.path_params["org"]
        org = await self.service.organisation(who.caller, name)
        licence, reductions = await self.service.licence(who.caller, name)
        declared = await self.service.declared_count(who.caller, name)
        return _page("dashboard", licence=licence, reductions=reductions, declared=declared,
                     **self.values(who, org))

    async def users(self, request: Request, who: Authenticated, *, status: int = 200,
                    error: str | None = None) -> Response:
        name = request.path_params["org"]
        org = await self.service.organisation(who.caller, name)
        search = request.query_params.get("q", "")[:64]
        views = await self.service.list_users(who.caller, name, search=search)
        declared = (await self.service.declared_count(who.caller, name) if search
                    else len(views))
        return _page("users", status=status, error=error,
                     users=[view.as_json() for view in views], search=search,
                     declared=declared, seats=org.seats, **self.values(who, org))

    async def add_user(self, request: Request, who: Authenticated) -> Response:
        name = request.path_params["org"]
        try:
            await self.service.declare(who.caller, name, request.state.form.get("phone", ""))
        except Exception as error:
            refusal = translate_error(error)
            if refusal is None or refusal.status in (401, 403, 404):
                raise
            return await self.users(request, who, status=refusal.status, error=refusal.message)
        return _see_other(f"/orgs/{name}/users")

    async def delete_user(self, request: Request, who: Authenticated) -> Response:
        name = request.path_params["org"]
        await self.service.delete(who.caller, name, request.path_params["phone"])
        return _see_other(f"/orgs/{name}/users")

    async def replace_user(self, request: Request, who: Authenticated) -> Response:
        name = request.path_params["org"]
        user = await self.service.replace(who.caller, name, request.path_params["phone"],
                                          request.state.form.get("phone", ""))
        return _see_other(f"/orgs/{name}/users/{urllib.parse.quote(user.phone)}")

    async def revoke_device(self, request: Request, who: Authenticated) -> Response:
        name, phone = request.path_params["org"], request.path_params["phone"]
        text = str(request.path_params["device_id"])
        if not text.isdigit() or len(text) > 9:
            raise ApiError(422, "invalid_request", "a device id is a positive integer")
        await self.service.revoke_device(who.caller, name, phone, int(text))
        return _see_other(f"/orgs/{name}/users/{urllib.parse.quote(phone)}")

    async def erase_user(self, request: Request, who: Authenticated) -> Response:
        name = request.path_params["org"]
        await self.service.erase(who.caller, name, request.path_params["phone"])
        return _see_other(f"/orgs/{name}/users")

    async def import_users(self, request: Request, who: Authenticated) -> Response:
        name = request.path_params["org"]
        problems = await self.service.import_csv(who.caller, name,
                                                 request.state.form.get("csv", ""))
        if problems:
            return await self.users(request, who, status=422, error="; ".join(problems[:20]))
        return _see_other(f"/orgs/{name}/users")

    async def export_users(self, request: Request, who: Authenticated) -> Response:
        text = await self.service.export_csv(who.caller, request.path_params["org"])
        return Response(text, media_type="text/csv; charset=utf-8", headers={
            "content-disposition": 'attachment; filename="users.csv"'})

    async def user(self, request: Request, who: Authenticated) -> Response:
        name = request.path_params["org"]
        org = await self.service.organisation(who.caller, name)
        view: UserView = await self.service.get_user(who.caller, name,
                                                     request.path_params["phone"])
        return _page("user", user=view.as_json(), **self.values(who, org))

    async def licence(self, request: Request, who: Authenticated, *, status: int = 200,
                      error: str | None = None) -> Response:
        name = request.path_params["org"]
        org = await self.service.organisation(who.caller, name)
        licence, reductions = await self.service.licence(who.caller, name)
        declared = await self.service.declared_count(who.caller, name)
        return _page("licence", status=status, error=error, licence=licence,
                     reductions=reductions, declared=declared, **self.values(who, org))

    async def reduce(self, request: Request, who: Authenticated) -> Response:
        name = request.path_params["org"]
        text = request.state.form.get("seats", "").strip()
        try:
            if not text.isdigit() or len(text) > 9:
                raise ApiError(422, "invalid_request", "write the number of seats")
            await self.service.request_reduction(who.caller, name, int(text))
        except Exception as error:
            refusal = translate_error(error)
            if refusal is None or refusal.status in (401, 403, 404):
                raise
            return await self.licence(request, who, status=refusal.status,
                                      error=refusal.message)
        return _see_other(f"/orgs/{name}/licence")

    async def audit(self, request: Request, who: Authenticated) -> Response:
        name = request.path_params["org"]
        org = await self.service.organisation(who.caller, name)
        action = request.query_params.get("action", "")[:64]
        subject = request.query_params.get("subject", "")[:64]
        entries = await self.service.audit(who.caller, name, action=action or None,
                                           subject=subject or None)
        return _page("audit", entries=[audit_json(entry) for entry in entries], action=action,
                     subject=subject, **self.values(who, org))

    async def set_state(self, request: Request, who: Authenticated) -> Response:
        name = request.path_params["org"]
        states = {state.value: state for state in OrganisationState}
        state = states.get(request.state.form.get("state", ""))
        if state is None:
            raise ApiError(422, "invalid_request", "choose a state")
        await self.service.set_state(who.caller, name, state)
        return _see_other(f"/orgs/{name}")

    async def account(self, request: Request, who: Authenticated, *, status: int = 200,
                      message: str | None = None, error: str | None = None) -> Response:
        return _page("account", status=status, message=message, error=error,
                     min_password=MIN_PASSWORD_CHARS, **self.values(who))

    async def change_password(self, request: Request, who: Authenticated) -> Response:
        assert who.session is not None
        form = request.state.form
        try:
            await self.service.change_password(who.session, current=form.get("current", ""),
                                               new=form.get("new", ""),
                                               address=client_address(request))
        except Forbidden as error:  # the current password is wrong
            return await self.account(request, who, status=403, error=str(error))
        except (TooManyGuesses, PasswordHashingBusy) as error:
            refusal = limit_refusal(error)
            response = await self.account(request, who, status=refusal.status,
                                          error=refusal.message)
            response.headers.update(refusal.headers())
            return response
        except InvalidRequest as error:  # the new one is too short or too long
            return await self.account(request, who, status=422, error=str(error))
        # Read the session again: a one-time password's session is now free.
        who = await authenticate(request, self.service, form_csrf=form.get(CSRF_FIELD))
        return await self.account(request, who, message="password changed; other sessions ended")


async def _stylesheet(request: Request) -> Response:
    return Response(CSS, media_type="text/css", headers={"cache-control": "max-age=3600"})


def console_routes(service: AdminService) -> list[Route]:
    """The console's routes over ``service``."""
    console = _Console(service)
    page = console.page
    org = "/orgs/{org}"
    user = org + "/users/{phone}"
    return [
        Route("/static/console.css", _stylesheet),
        Route("/login", console.login_form, methods=["GET"]),
        Route("/login", console.login, methods=["POST"]),
        Route("/logout", page(console.logout, changing_password=True), methods=["POST"]),
        Route("/", page(console.home)),
        Route("/account", page(console.account, changing_password=True)),
        Route("/account/password", page(console.change_password, changing_password=True),
              methods=["POST"]),
        Route(org, page(console.dashboard)),
        Route(org + "/state", page(console.set_state), methods=["POST"]),
        Route(org + "/users", page(console.users), methods=["GET"]),
        Route(org + "/users", page(console.add_user), methods=["POST"]),
        Route(org + "/users.csv", page(console.export_users)),
        Route(org + "/users/import", page(console.import_users, form_limit=MAX_CSV_BODY_BYTES),
              methods=["POST"]),
        Route(user, page(console.user)),
        Route(user + "/delete", page(console.delete_user), methods=["POST"]),
        Route(user + "/replace", page(console.replace_user), methods=["POST"]),
        Route(user + "/erase", page(console.erase_user), methods=["POST"]),
        Route(user + "/devices/{device_id}/revoke", page(console.revoke_device),
              methods=["POST"]),
        Route(org + "/licence", page(console.licence), methods=["GET"]),
        Route(org + "/licence", page(console.reduce), methods=["POST"]),
        Route(org + "/audit", page(console.audit)),
    ]
