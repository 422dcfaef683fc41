"""The console: server-rendered pages over the same ``AdminService`` as the API.

Forms post back and are answered with a redirect (so a reload never repeats an action) that
carries a notice of what was done, or, when refused, with the page, the reason and what was
typed. Every form carries the session's CSRF token; the login form, made before any session
exists, carries a token that must equal a cookie set with it (double submit). A destructive
action (delete, revoke, erase, terminate) acts only when posted from its confirmation page
(``console_base.CONFIRM_FIELD``); posted without it, it shows that page. A session opened with
a one-time password is sent to the Account page from every other page until it has changed
the password. The organisation pages that only read are in ``console_pages``.
"""

from __future__ import annotations

import urllib.parse

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from enrolment.errors import InvalidRequest
from enrolment.licence_dates import parse_contract_start, parse_offer
from enrolment.numbers import parse_phone
from enrolment.web.auth import MIN_PASSWORD_CHARS, PasswordHashingBusy
from enrolment.web.console_pages import ConsolePages, login_routes
from enrolment.web.http import (
    CSRF_FIELD,
    MAX_CSV_BODY_BYTES,
    ApiError,
    Authenticated,
    authenticate,
    client_address,
    limit_refusal,
    translate_error,
)
from enrolment.web.service import AdminService, Forbidden, TooManyGuesses
from storage.base import OrganisationState
from wire.phone import national_format

__all__ = ["console_routes"]

_STATE_NOTICES = {
    OrganisationState.ACTIVE: "is active again: its users may connect",
    OrganisationState.SUSPENDED: "is suspended: its users were disconnected, their data kept",
    OrganisationState.TERMINATED: "is terminated: every user was removed",
}


def _user_path(name: str, phone: str) -> str:
    return f"/orgs/{name}/users/{urllib.parse.quote(phone, safe='')}"


def _whole_number(text: str, what: str) -> int:
    text = text.strip()
    if not text.isdigit() or len(text) > 9:
        raise ApiError(422, "invalid_request", f"write the number of {what} in digits")
    return int(text)


def _editable(error: Exception) -> ApiError | None:
    """A refusal of what was typed (shown again in its form), or None for one that is not
    (no session, not allowed, nothing there: the refusal page)."""
    refusal = translate_error(error)
    if refusal is None or refusal.status in (401, 403, 404):
        return None
    return refusal


class _Console(ConsolePages):
    # -- users -------------------------------------------------------------------------

    async def add_user(self, request: Request, who: Authenticated) -> Response:
        name = request.path_params["org"]
        try:
            user = await self.service.declare(who.caller, name,
                                              request.state.form.get("phone", ""))
        except Exception as error:
            refusal = _editable(error)
            if refusal is None:
                raise
            return await self.users(request, who, status=refusal.status, error=refusal.message,
                                    entered=request.state.form)
        return self.done(who, f"/orgs/{name}/users",
                         f"{national_format(user.phone)} added: they may enrol now")

    async def delete_user(self, request: Request, who: Authenticated) -> Response:
        name, phone = request.path_params["org"], parse_phone(request.path_params["phone"])
        number = national_format(phone)
        if request.method == "GET" or not self.confirmed(request):
            org = await self.service.organisation(who.caller, name)
            return await self.confirmation(
                request, who, org, title=f"Delete {number}?", button=f"Delete {number}",
                back=f"/orgs/{name}/users", consequences=[
                    f"{number} loses its seat at once: its devices are disconnected and "
                    "refused from now on, and the messages waiting for them are dropped.",
                    "The audit log keeps the number. To remove it from there too, erase "
                    "the user instead (on its page)."])
        await self.service.delete(who.caller, name, phone)
        return self.done(who, f"/orgs/{name}/users",
                         f"{number} deleted: its devices were disconnected")

    async def erase_user(self, request: Request, who: Authenticated) -> Response:
        name, phone = request.path_params["org"], parse_phone(request.path_params["phone"])
        number = national_format(phone)
        if request.method == "GET" or not self.confirmed(request):
            org = await self.service.organisation(who.caller, name)
            return await self.confirmation(
                request, who, org, title=f"Erase {number}?", button=f"Erase {number}",
                back=_user_path(name, phone), consequences=[
                    f"{number} is deleted as by Delete, and in the audit log its number is "
                    "replaced by a pseudonym: nothing left names it.",
                    "This cannot be undone. Export the personal data first if it was asked "
                    "for."])
        pseudonym = await self.service.erase(who.caller, name, phone)
        return self.done(who, f"/orgs/{name}/users",
                         f"{number} erased: the audit log now names it {pseudonym}")

    async def revoke_device(self, request: Request, who: Authenticated) -> Response:
        name, phone = request.path_params["org"], parse_phone(request.path_params["phone"])
        device_id = _whole_number(str(request.path_params["device_id"]), "a device id")
        number = national_format(phone)
        if request.method == "GET" or not self.confirmed(request):
            org = await self.service.organisation(who.caller, name)
            return await self.confirmation(
                request, who, org, title=f"Revoke device {device_id} of {number}?",
                button=f"Revoke device {device_id}", back=_user_path(name, phone),
                consequences=[
                    f"Device {device_id} is disconnected at once and refused for good; the "
                    "messages waiting for it are dropped. The user keeps its seat and its "
                    "other devices.",
                    "To use that phone again, the user enrols it again by SMS code."])
        await self.service.revoke_device(who.caller, name, phone, device_id)
        return self.done(who, _user_path(name, phone),
                         f"device {device_id} of {number} revoked and disconnected")

    async def replace_user(self, request: Request, who: Authenticated) -> Response:
        name, phone = request.path_params["org"], request.path_params["phone"]
        try:
            user = await self.service.replace(who.caller, name, phone,
                                              request.state.form.get("phone", ""))
        except Exception as error:
            refusal = _editable(error)
            if refusal is None:
                raise
            return await self.user(request, who, status=refusal.status, error=refusal.message,
                                   entered=request.state.form)
        return self.done(who, _user_path(name, user.phone),
                         f"{national_format(phone)} replaced by {national_format(user.phone)}")

    async def import_users(self, request: Request, who: Authenticated) -> Response:
        name = request.path_params["org"]
        problems = await self.service.import_csv(who.caller, name,
                                                 request.state.form.get("csv", ""))
        if problems:
            return await self.users(request, who, status=422, error="; ".join(problems[:20]),
                                    entered=request.state.form)
        return self.done(who, f"/orgs/{name}/users", "import done: every number declared")

    # -- licence -----------------------------------------------------------------------

    async def change_licence(self, request: Request, who: Authenticated) -> Response:
        name = request.path_params["org"]
        form = request.state.form
        try:
            notice = await self._licence_change(who, name, form)
        except Exception as error:
            refusal = _editable(error)
            if refusal is None:
                raise
            return await self.licence(request, who, status=refusal.status,
                                      error=refusal.message, entered=form)
        return self.done(who, f"/orgs/{name}/licence", notice)

    async def _licence_change(self, who: Authenticated, name: str,
                              form: dict[str, str]) -> str:
        change = form.get("change", "reduce")
        if change == "reduce":
            seats = _whole_number(form.get("seats", ""), "seats")
            reduction = await self.service.request_reduction(who.caller, name, seats)
            return (f"reduction to {seats} seats requested: it applies on "
                    f"{reduction.effective_on.isoformat()}")
        self.require_operator(who)
        if change == "add":
            added = _whole_number(form.get("seats", ""), "seats")
            licence = await self.service.add_seats(who.caller, name, added)
            return f"{added} seats added: the licence has {licence.seats} seats now"
        if change == "terms":
            offer = parse_offer(form.get("offer", ""))
            start = parse_contract_start(form.get("contract_start", "").strip())
            await self.service.set_licence_terms(who.caller, name, offer=offer,
                                                 contract_start=start)
            return f"terms set: {offer.value.replace('_', ' ')} from {start.isoformat()}"
        raise InvalidRequest("choose a change of the licence")

    # -- lifecycle and policy (operators) ---------------------------------------------------

    async def set_state(self, request: Request, who: Authenticated) -> Response:
        name = request.path_params["org"]
        self.require_operator(who)
        states = {state.value: state for state in OrganisationState}
        state = states.get(request.state.form.get("state", ""))
        if state is None:
            raise ApiError(422, "invalid_request", "choose a state")
        if state is OrganisationState.TERMINATED and not self.confirmed(request):
            return await self.terminate(request, who)
        await self.service.set_state(who.caller, name, state)
        return self.done(who, f"/orgs/{name}", f"{name} {_STATE_NOTICES[state]}")

    async def terminate(self, request: Request, who: Authenticated) -> Response:
        """The confirmation of a termination (GET /orgs/{org}/terminate)."""
        name = request.path_params["org"]
        self.require_operator(who)
        org = await self.service.organisation(who.caller, name)
        return await self.confirmation(
            request, who, org, title=f"Terminate {name}?", button=f"Terminate {name}",
            back=f"/orgs/{name}", action=f"/orgs/{name}/state",
            fields=(("state", OrganisationState.TERMINATED.value),), consequences=[
                f"Every user of {name} is removed at once: devices, queued messages and "
                "prekeys go, live connections are closed.",
                "Their numbers in the audit log are replaced by pseudonyms. This cannot be "
                "undone: to stop service for a while, suspend instead."])

    async def set_policy(self, request: Request, who: Authenticated) -> Response:
        name = request.path_params["org"]
        choice = request.state.form.get("cross_organisation", "")
        if choice not in ("allowed", "refused"):
            raise ApiError(422, "invalid_request", "choose allowed or refused")
        await self.service.set_cross_organisation(who.caller, name, choice == "allowed")
        return self.done(who, f"/orgs/{name}",
                         f"messages with other organisations are {choice} for {name}")

    # -- account -----------------------------------------------------------------------

    async def account(self, request: Request, who: Authenticated, *, status: int = 200,
                      message: str | None = None, error: str | None = None) -> Response:
        values = await self.values(request, who)
        if message is not None:
            values["message"] = message
        return self.render("account", status=status, error=error,
                           min_password=MIN_PASSWORD_CHARS, **values)

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


def console_routes(service: AdminService) -> list[Route]:
    """The console's routes over ``service``."""
    console = _Console(service)
    page = console.page
    org = "/orgs/{org}"
    user = org + "/users/{phone}"
    return [
        *login_routes(console),
        Route("/", page(console.home)),
        Route("/account", page(console.account, changing_password=True)),
        Route("/account/password", page(console.change_password, changing_password=True),
              methods=["POST"]),
        Route(org, page(console.dashboard)),
        Route(org + "/state", page(console.set_state), methods=["POST"]),
        Route(org + "/terminate", page(console.terminate), methods=["GET"]),
        Route(org + "/policy", page(console.set_policy), methods=["POST"]),
        Route(org + "/users", page(console.users), methods=["GET"]),
        Route(org + "/users", page(console.add_user), methods=["POST"]),
        Route(org + "/users.csv", page(console.export_users)),
        Route(org + "/users/import", page(console.import_users, form_limit=MAX_CSV_BODY_BYTES),
              methods=["POST"]),
        Route(user, page(console.user)),
        Route(user + "/delete", page(console.delete_user), methods=["GET", "POST"]),
        Route(user + "/replace", page(console.replace_user), methods=["POST"]),
        Route(user + "/erase", page(console.erase_user), methods=["GET", "POST"]),
        Route(user + "/devices/{device_id}/revoke", page(console.revoke_device),
              methods=["GET", "POST"]),
        Route(org + "/licence", page(console.licence), methods=["GET"]),
        Route(org + "/licence", page(console.change_licence), methods=["POST"]),
        Route(org + "/audit", page(console.audit)),
        Route("/{path:path}", page(console.not_found), methods=["GET"]),
    ]
