"""``cryptopass-relay admin`` commands for console accounts and API tokens.

``admin operator create --email E`` and ``admin org admin-add --org NAME --email E`` print a
one-time password (shown once, stored only as its Argon2id hash; the administrator changes it
on the console's Account page). ``admin token create --org NAME`` prints an API token for that
organisation (stored only as its SHA-256).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar

import typer

from enrolment.errors import InvalidRequest
from enrolment.web.auth import hash_password, new_api_token, new_one_time_password, secret_hash
from storage.admin_records import AccountRole
from storage.base import AccountStore, AuditLog, Directory, NotFound

__all__ = ["MAX_EMAIL_CHARS", "AccountCommandsStore", "normalised_email",
           "register_account_commands"]

T = TypeVar("T")

MAX_EMAIL_CHARS = 254
"""RFC 5321's limit on a forward path."""
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

DataDirOption = Annotated[Path | None, typer.Option("--data-dir", help="Relay data directory.")]
JsonOption = Annotated[bool | None, typer.Option("--json", help="Print JSON.")]
WithStore = Callable[[Path, Callable[[Any], Awaitable[Any]]], Any]
Options = Callable[[Path | None, bool | None], tuple[Path, bool]]


class AccountCommandsStore(AccountStore, AuditLog, Directory, Protocol):
    """What these commands need of the store: accounts and tokens, the audit log, and the
    organisation they concern."""


def normalised_email(text: str) -> str:
    """Lowercased, trimmed email; raises InvalidRequest if it cannot be one."""
    email = text.strip().lower()
    if len(email) > MAX_EMAIL_CHARS or _EMAIL.fullmatch(email) is None:
        raise InvalidRequest("this is not an email address")
    return email


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def register_account_commands(admin_app: typer.Typer, org_app: typer.Typer, *,
                              with_store: WithStore, options: Options) -> None:
    """Add the account and token commands to the ``admin`` command group."""
    operator_app = typer.Typer(help="Operator accounts (every organisation).",
                               no_args_is_help=True)
    token_app = typer.Typer(help="API tokens of an organisation.", no_args_is_help=True)
    admin_app.add_typer(operator_app, name="operator")
    admin_app.add_typer(token_app, name="token")

    def create_account(directory: Path, email_text: str, role: AccountRole,
                       organisation: str | None) -> tuple[str, str]:
        async def work(store: AccountCommandsStore) -> tuple[str, str]:
            email = normalised_email(email_text)
            password = new_one_time_password()
            await store.create_account(email=email, role=role, organisation=organisation,
                                       password_hash=hash_password(password), now=_now_ms())
            if organisation is not None:
                found = await store.get_organisation(organisation)
                assert found is not None
                await store.append_audit(organisation_id=found.organisation_id, actor="cli",
                                         action="account.create", subject=email,
                                         address="local", now=_now_ms())
            return email, password
        result: tuple[str, str] = with_store(directory, work)
        return result

    def print_password(email: str, password: str, as_json: bool) -> None:
        if as_json:
            typer.echo(json.dumps({"email": email, "one_time_password": password}))
        else:
            typer.echo(f"Account {email} created. One-time password (shown once; change it "
                       f"on the console's Account page): {password}")

    @operator_app.command("create")
    def operator_create(email: Annotated[str, typer.Option(help="Login email.")],
                        data_dir: DataDirOption = None,
                        json_output: JsonOption = None) -> None:
        """Create an operator account (all organisations); prints a one-time password."""
        directory, as_json = options(data_dir, json_output)
        print_password(*create_account(directory, email, AccountRole.OPERATOR, None), as_json)

    @org_app.command("admin-add")
    def org_admin_add(org: Annotated[str, typer.Option(help="Organisation name.")],
                      email: Annotated[str, typer.Option(help="Login email.")],
                      data_dir: DataDirOption = None,
                      json_output: JsonOption = None) -> None:
        """Create an administrator of --org; prints a one-time password."""
        directory, as_json = options(data_dir, json_output)
        print_password(*create_account(directory, email, AccountRole.ORGANISATION_ADMIN, org),
                       as_json)

    _register_token_commands(token_app, with_store=with_store, options=options)


def _register_token_commands(token_app: typer.Typer, *, with_store: WithStore,
                             options: Options) -> None:
    @token_app.command("create")
    def token_create(org: Annotated[str, typer.Option(help="Organisation name.")],
                     data_dir: DataDirOption = None,
                     json_output: JsonOption = None) -> None:
        """Create an API token for --org's admin API; prints it once."""
        directory, as_json = options(data_dir, json_output)

        async def work(store: AccountCommandsStore) -> tuple[int, str]:
            token = new_api_token()
            found = await store.get_organisation(org)
            if found is None:
                raise NotFound(f"no organisation named {org!r}")
            created = await store.create_api_token(organisation=org,
                                                   token_hash=secret_hash(token), now=_now_ms())
            await store.append_audit(organisation_id=found.organisation_id, actor="cli",
                                     action="token.create", subject=f"token:{created.token_id}",
                                     address="local", now=_now_ms())
            return created.token_id, token

        token_id, token = with_store(directory, work)
        if as_json:
            typer.echo(json.dumps({"token_id": token_id, "token": token}))
        else:
            typer.echo(f"Token {token_id} for {org} (shown once): {token}")

    @token_app.command("revoke")
    def token_revoke(token_id: Annotated[int, typer.Argument(help="The token's id.")],
                     org: Annotated[str, typer.Option(help="Organisation name.")],
                     data_dir: DataDirOption = None,
                     json_output: JsonOption = None) -> None:
        """Revoke token TOKEN_ID of --org: it is refused from the next request on."""
        directory, as_json = options(data_dir, json_output)

        async def work(store: AccountCommandsStore) -> int | None:
            revoked = await store.revoke_api_token(organisation=org, token_id=token_id,
                                                   now=_now_ms())
            await store.append_audit(organisation_id=revoked.organisation_id, actor="cli",
                                     action="token.revoke", subject=f"token:{token_id}",
                                     address="local", now=_now_ms())
            return revoked.revoked_at

        revoked_at = with_store(directory, work)
        if as_json:
            typer.echo(json.dumps({"token_id": token_id, "revoked_at": revoked_at}))
        else:
            typer.echo(f"Token {token_id} of {org} revoked.")
