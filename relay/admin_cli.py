"""``cryptopass-relay admin`` commands for console accounts and API tokens, and what every
``admin`` command that changes something shares: ``cli_service``.

Every change goes through ``enrolment.web.service.AdminService`` as its ``CLI_CALLER`` (an
operator, audited as ``cli`` from ``local``), under the same rules and with the same audit
entries as the admin API.

``admin operator create --email E`` and ``admin org admin-add --org NAME --email E`` print a
one-time password (shown once, stored only as its Argon2id hash): it opens one console session,
which may do nothing but choose the account's own password. ``admin account reset-password
--email E`` prints a new one. ``admin token create --org NAME`` prints an API token for that
organisation (stored only as its SHA-256).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from enrolment.web.service import CLI_CALLER, AdminService, AdminServiceStore
from relay.settings import DEFAULT_DATA_DIR

__all__ = ["CliCloser", "DataDirOption", "JsonOption", "cli_service",
           "register_account_commands"]

DataDirOption = Annotated[Path | None, typer.Option(
    "--data-dir", help=f"Relay data directory \\[default: the configured data_dir, "
                       f"else {DEFAULT_DATA_DIR}].")]
JsonOption = Annotated[bool | None, typer.Option(
    "--json", help="Print JSON \\[default: text].")]
WithStore = Callable[[Path, Callable[[Any], Awaitable[Any]]], Any]
Options = Callable[[Path | None, bool | None], tuple[Path, bool]]


class CliCloser:
    """What the service asks to close, collected: the command then tells a relay running on
    the data directory through its control socket (``relay.control``), which closes every
    connection of each user at once."""

    def __init__(self) -> None:
        self.user_ids: list[str] = []

    def user_deleted(self, user_id: str) -> int:
        self.user_ids.append(user_id)
        return 0

    def device_revoked(self, user_id: str, device_id: int) -> int:
        self.user_ids.append(user_id)
        return 0

    def organisation_suspended(self, user_id: str) -> int:
        self.user_ids.append(user_id)
        return 0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def cli_service(store: AdminServiceStore, closer: CliCloser | None = None) -> AdminService:
    """The administration service over the CLI's store, on the wall clock."""
    return AdminService(store, closer or CliCloser(), now_ms=_now_ms)


def register_account_commands(admin_app: typer.Typer, org_app: typer.Typer, *,
                              with_store: WithStore, options: Options) -> None:
    """Add the account and token commands to the ``admin`` command group."""
    operator_app = typer.Typer(help="Operator accounts (every organisation).",
                               no_args_is_help=True)
    account_app = typer.Typer(help="Console accounts of operators and administrators.",
                              no_args_is_help=True)
    token_app = typer.Typer(help="API tokens of an organisation.", no_args_is_help=True)
    admin_app.add_typer(operator_app, name="operator")
    admin_app.add_typer(account_app, name="account")
    admin_app.add_typer(token_app, name="token")

    def create_account(directory: Path, email: str, organisation: str | None) -> tuple[str, str]:
        async def work(store: AdminServiceStore) -> tuple[str, str]:
            account, password = await cli_service(store).create_account(
                CLI_CALLER, email, organisation=organisation)
            return account.email, password
        result: tuple[str, str] = with_store(directory, work)
        return result

    def print_password(email: str, password: str, as_json: bool, *, created: bool) -> None:
        if as_json:
            typer.echo(json.dumps({"email": email, "one_time_password": password}))
        else:
            typer.echo(f"Account {email} {'created' if created else 'reset'}. One-time password "
                       f"(shown once; it logs in once, and that session must choose a new "
                       f"password on the console's Account page): {password}")

    @operator_app.command("create")
    def operator_create(email: Annotated[str, typer.Option(help="Login email.")],
                        data_dir: DataDirOption = None,
                        json_output: JsonOption = None) -> None:
        """Create an operator account (all organisations); prints a one-time password."""
        directory, as_json = options(data_dir, json_output)
        print_password(*create_account(directory, email, None), as_json, created=True)

    @org_app.command("admin-add")
    def org_admin_add(org: Annotated[str, typer.Option(help="Organisation name.")],
                      email: Annotated[str, typer.Option(help="Login email.")],
                      data_dir: DataDirOption = None,
                      json_output: JsonOption = None) -> None:
        """Create an administrator of --org; prints a one-time password."""
        directory, as_json = options(data_dir, json_output)
        print_password(*create_account(directory, email, org), as_json, created=True)

    @account_app.command("reset-password")
    def account_reset_password(email: Annotated[str, typer.Option(help="Login email.")],
                               data_dir: DataDirOption = None,
                               json_output: JsonOption = None) -> None:
        """Give the account a new one-time password and end its sessions (a lost password,
        or a one-time password used without choosing a new one)."""
        directory, as_json = options(data_dir, json_output)

        async def work(store: AdminServiceStore) -> tuple[str, str]:
            account, password = await cli_service(store).reset_password(CLI_CALLER, email)
            return account.email, password

        reset: tuple[str, str] = with_store(directory, work)
        print_password(*reset, as_json, created=False)

    _register_token_commands(token_app, with_store=with_store, options=options)


def _register_token_commands(token_app: typer.Typer, *, with_store: WithStore,
                             options: Options) -> None:
    @token_app.command("create")
    def token_create(org: Annotated[str, typer.Option(help="Organisation name.")],
                     data_dir: DataDirOption = None,
                     json_output: JsonOption = None) -> None:
        """Create an API token for --org's admin API; prints it once."""
        directory, as_json = options(data_dir, json_output)

        async def work(store: AdminServiceStore) -> tuple[int, str]:
            created, token = await cli_service(store).create_api_token(CLI_CALLER, org)
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

        async def work(store: AdminServiceStore) -> int | None:
            revoked = await cli_service(store).revoke_api_token(CLI_CALLER, org, token_id)
            return revoked.revoked_at

        revoked_at = with_store(directory, work)
        if as_json:
            typer.echo(json.dumps({"token_id": token_id, "revoked_at": revoked_at}))
        else:
            typer.echo(f"Token {token_id} of {org} revoked.")
