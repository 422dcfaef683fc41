"""The JSON admin API (``/api/v1``), documented in docs/ADMIN_API.md.

Every route needs a bearer token or a console session (with its CSRF header when it changes
something); errors are ``{"error": code, "message": text}``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from enrolment.web.http import (
    MAX_CSV_BODY_BYTES,
    ApiError,
    authenticate,
    json_endpoint,
    read_body,
    read_json,
)
from enrolment.web.service import AdminService, Caller, audit_json
from storage.admin_records import Licence, SeatReduction
from storage.base import OrganisationState, User

__all__ = ["api_routes", "licence_json", "reduction_json"]

_STATES = {state.value: state for state in OrganisationState}


def reduction_json(reduction: SeatReduction) -> dict[str, Any]:
    return {"id": reduction.reduction_id, "seats": reduction.seats,
            "effective_on": reduction.effective_on.isoformat()}


def licence_json(licence: Licence, reductions: list[SeatReduction],
                 declared: int) -> dict[str, Any]:
    return {"seats": licence.seats, "declared": declared, "offer": licence.offer.value,
            "period_start": licence.period_start.isoformat(),
            "pending_reductions": [reduction_json(found) for found in reductions]}


def _user_json(user: User) -> dict[str, Any]:
    return {"phone": user.phone, "status": user.state.value}


def _string_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise ApiError(422, "invalid_request", f"{name!r} must be a string")
    return value


def _integer_field(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(422, "invalid_request", f"{name!r} must be an integer")
    return value


def _optional_int(request: Request, name: str) -> int | None:
    text = request.query_params.get(name)
    if text is None or text == "":
        return None
    if not text.isdigit() or len(text) > 18:
        raise ApiError(422, "invalid_request", f"{name!r} must be a positive integer")
    return int(text)


class _AdminApi:
    def __init__(self, service: AdminService) -> None:
        self.service = service

    async def caller_of(self, request: Request) -> Caller:
        return (await authenticate(request, self.service)).caller

    @staticmethod
    def org(request: Request) -> str:
        return str(request.path_params["org"])

    @staticmethod
    def phone(request: Request) -> str:
        return str(request.path_params["phone"])

    async def list_users(self, request: Request) -> Response:
        caller = await self.caller_of(request)
        views = await self.service.list_users(caller, self.org(request),
                                              search=request.query_params.get("q"))
        return JSONResponse({"users": [view.as_json() for view in views]})

    async def declare_user(self, request: Request) -> Response:
        caller = await self.caller_of(request)
        body = await read_json(request)
        user = await self.service.declare(caller, self.org(request), _string_field(body, "phone"))
        return JSONResponse(_user_json(user), status_code=201)

    async def get_user(self, request: Request) -> Response:
        caller = await self.caller_of(request)
        view = await self.service.get_user(caller, self.org(request), self.phone(request))
        return JSONResponse(view.as_json())

    async def delete_user(self, request: Request) -> Response:
        caller = await self.caller_of(request)
        user = await self.service.delete(caller, self.org(request), self.phone(request))
        return JSONResponse({"deleted": user.phone})

    async def revoke_device(self, request: Request) -> Response:
        caller = await self.caller_of(request)
        text = str(request.path_params["device_id"])
        if not text.isdigit() or len(text) > 9:
            raise ApiError(422, "invalid_request", "a device id is a positive integer")
        device = await self.service.revoke_device(caller, self.org(request),
                                                  self.phone(request), int(text))
        return JSONResponse({"revoked_device_id": device.device_id})

    async def replace_user(self, request: Request) -> Response:
        caller = await self.caller_of(request)
        body = await read_json(request)
        user = await self.service.replace(caller, self.org(request), self.phone(request),
                                     _string_field(body, "phone"))
        return JSONResponse(_user_json(user))

    async def export_users(self, request: Request) -> Response:
        caller = await self.caller_of(request)
        text = await self.service.export_csv(caller, self.org(request))
        return Response(text, media_type="text/csv; charset=utf-8")

    async def import_users(self, request: Request) -> Response:
        caller = await self.caller_of(request)
        try:
            text = (await read_body(request, MAX_CSV_BODY_BYTES)).decode("utf-8")
        except UnicodeDecodeError as error:
            raise ApiError(422, "invalid_request", "the CSV must be UTF-8") from error
        problems = await self.service.import_csv(caller, self.org(request), text)
        return JSONResponse({"problems": problems})

    async def licence(self, request: Request) -> Response:
        caller = await self.caller_of(request)
        found, reductions = await self.service.licence(caller, self.org(request))
        declared = await self.service.declared_count(caller, self.org(request))
        return JSONResponse(licence_json(found, reductions, declared))

    async def reduce(self, request: Request) -> Response:
        caller = await self.caller_of(request)
        body = await read_json(request)
        reduction = await self.service.request_reduction(caller, self.org(request),
                                                    _integer_field(body, "seats"))
        return JSONResponse(reduction_json(reduction), status_code=201)

    async def add(self, request: Request) -> Response:
        caller = await self.caller_of(request)
        body = await read_json(request)
        found = await self.service.add_seats(caller, self.org(request),
                                             _integer_field(body, "seats"))
        return JSONResponse({"seats": found.seats})

    async def audit(self, request: Request) -> Response:
        caller = await self.caller_of(request)
        limit = _optional_int(request, "limit")
        entries = await self.service.audit(
            caller, self.org(request), action=request.query_params.get("action") or None,
            subject=request.query_params.get("subject") or None,
            before_entry_id=_optional_int(request, "before"),
            limit=100 if limit is None else limit)
        return JSONResponse({"entries": [audit_json(entry) for entry in entries]})

    async def personal_data(self, request: Request) -> Response:
        caller = await self.caller_of(request)
        exported = await self.service.export_personal_data(caller, self.org(request),
                                                           self.phone(request))
        return JSONResponse(exported)

    async def erase(self, request: Request) -> Response:
        caller = await self.caller_of(request)
        pseudonym = await self.service.erase(caller, self.org(request), self.phone(request))
        return JSONResponse({"erased": True, "pseudonym": pseudonym})

    async def set_state(self, request: Request) -> Response:
        caller = await self.caller_of(request)
        body = await read_json(request)
        state = _STATES.get(_string_field(body, "state"))
        if state is None:
            raise ApiError(422, "invalid_request", f"state is one of {sorted(_STATES)}")
        await self.service.set_state(caller, self.org(request), state)
        return JSONResponse({"state": state.value})

    async def set_policy(self, request: Request) -> Response:
        caller = await self.caller_of(request)
        body = await read_json(request)
        allowed = body.get("cross_organisation")
        if not isinstance(allowed, bool):
            raise ApiError(422, "invalid_request", "'cross_organisation' must be true or false")
        await self.service.set_cross_organisation(caller, self.org(request), allowed)
        return JSONResponse({"cross_organisation": allowed})


def api_routes(service: AdminService) -> list[Route]:
    """The API's routes over ``service``."""
    api = _AdminApi(service)
    base = "/api/v1/orgs/{org}"
    table = [
        ("/users", api.list_users, ["GET"]),
        ("/users", api.declare_user, ["POST"]),
        ("/users.csv", api.export_users, ["GET"]),
        ("/users.csv", api.import_users, ["POST"]),
        ("/users/{phone}", api.get_user, ["GET"]),
        ("/users/{phone}", api.delete_user, ["DELETE"]),
        ("/users/{phone}/replace", api.replace_user, ["POST"]),
        ("/users/{phone}/devices/{device_id}", api.revoke_device, ["DELETE"]),
        ("/users/{phone}/personal-data", api.personal_data, ["GET"]),
        ("/users/{phone}/erase", api.erase, ["POST"]),
        ("/licence", api.licence, ["GET"]),
        ("/licence/reductions", api.reduce, ["POST"]),
        ("/licence/additions", api.add, ["POST"]),
        ("/audit", api.audit, ["GET"]),
        ("/state", api.set_state, ["POST"]),
        ("/policy", api.set_policy, ["POST"]),
    ]
    return [Route(base + path, json_endpoint(handler), methods=methods)
            for path, handler, methods in table]
