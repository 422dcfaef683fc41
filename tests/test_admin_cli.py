"""``cryptopass-relay admin operator create / org admin-add / token create``: the printed
credentials work, are stored only hashed, and bad input changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import trio
from typer.testing import CliRunner

from enrolment.web.auth import secret_hash, verify_password
from relay.cli import app
from storage.admin_records import Account, AccountRole, ApiToken
from storage.sqlite import open_sqlite_store

runner = CliRunner()


def _run(data_dir: Path, *arguments: str) -> tuple[int, str]:
    result = runner.invoke(app, ["admin", "--data-dir", str(data_dir), *arguments])
    return result.exit_code, result.output


def _account(data_dir: Path, email: str) -> Account | None:
    async def read() -> Account | None:
        async with open_sqlite_store(data_dir / "relay.db") as store:
            return await store.find_account(email)
    return trio.run(read)


def _token(data_dir: Path, token: str) -> ApiToken | None:
    async def read() -> ApiToken | None:
        async with open_sqlite_store(data_dir / "relay.db") as store:
            return await store.find_api_token(secret_hash(token))
    return trio.run(read)


def test_accounts_and_tokens_are_created_with_working_secrets(tmp_path: Path) -> None:
    assert _run(tmp_path, "org", "create", "acme", "--seats", "3")[0] == 0
    code, output = _run(tmp_path, "--json", "org", "admin-add", "--org", "acme",
                        "--email", " Admin@Acme.Example ")
    assert code == 0, output
    created = json.loads(output)
    account = _account(tmp_path, "admin@acme.example")
    assert account is not None
    assert account.role is AccountRole.ORGANISATION_ADMIN
    assert created["one_time_password"] not in account.password_hash
    assert account.password_hash.startswith("$argon2id$")
    assert verify_password(account.password_hash, created["one_time_password"])

    code, output = _run(tmp_path, "--json", "operator", "create", "--email", "op@example.net")
    operator = _account(tmp_path, "op@example.net")
    assert code == 0 and operator is not None
    assert operator.role is AccountRole.OPERATOR

    code, output = _run(tmp_path, "--json", "token", "create", "--org", "acme")
    assert code == 0, output
    token = json.loads(output)["token"]
    stored = _token(tmp_path, token)
    assert stored is not None
    assert stored.token_id == json.loads(output)["token_id"]
    assert _run(tmp_path, "token", "revoke", str(stored.token_id), "--org", "other")[0] == 1
    assert _token(tmp_path, token) is not None
    code, output = _run(tmp_path, "token", "revoke", str(stored.token_id), "--org", "acme")
    assert code == 0, output
    assert _token(tmp_path, token) is None


def test_bad_input_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    assert _run(tmp_path, "org", "create", "acme", "--seats", "3")[0] == 0
    for arguments in (["operator", "create", "--email", "not-an-email"],
                      ["org", "admin-add", "--org", "nope", "--email", "a@example.org"],
                      ["token", "create", "--org", "nope"]):
        code, output = _run(tmp_path, *arguments)
        assert code == 1, arguments
        assert output.startswith("error: "), output
    assert _account(tmp_path, "a@example.org") is None
    assert _run(tmp_path, "operator", "create", "--email", "op@example.net")[0] == 0
    code, output = _run(tmp_path, "operator", "create", "--email", "OP@example.net")
    assert (code, output.strip()) == (1, "error: an account with this email already exists")
