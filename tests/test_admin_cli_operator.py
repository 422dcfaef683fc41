"""An operator's first hour with the real ``cryptopass-relay admin`` command, in subprocesses:
every change is audited as ``cli``; ``org create`` records the licence terms the admin API
shows and refuses bad values in one line, changing nothing; the help shows every default."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import typer
from typer.testing import CliRunner

from enrolment.web.api import licence_json
from relay.cli import app
from storage.admin_records import RELAY_WIDE_AUDIT, AuditEntry, Licence
from storage.base import Organisation
from storage.store_url import open_store, parse_store_url

RELAY = str(Path(sys.executable).parent / "cryptopass-relay")
PHONE = "+33612345678"


def _environment() -> dict[str, str]:
    """This environment without relay settings, on a wide terminal (no wrapped help)."""
    kept = {name: value for name, value in os.environ.items()
            if not name.startswith("CRYPTOPASS_")}
    return {**kept, "COLUMNS": "200", "NO_COLOR": "1"}


def _admin(data_dir: Path, *arguments: str, store: str | None = None,
           ) -> subprocess.CompletedProcess[str]:
    chosen = ["--store", store] if store is not None else []
    return subprocess.run([RELAY, "admin", "--data-dir", str(data_dir), *chosen, *arguments],
                          capture_output=True, text=True, timeout=60, env=_environment(),
                          check=False)


def _ok(data_dir: Path, *arguments: str, store: str | None = None) -> str:
    done = _admin(data_dir, *arguments, store=store)
    assert (done.returncode, done.stderr) == (0, ""), arguments
    return done.stdout


def _read(data_dir: Path, store: str | None, work: Any) -> Any:
    async def run() -> Any:
        async with open_store(parse_store_url(store, data_dir=data_dir)) as opened:
            return await work(opened)
    return trio.run(run)


@contextmanager
def _store(backend: str) -> Iterator[str | None]:
    """None (SQLite in the data directory) or a PostgreSQL URL on a fresh schema."""
    if backend == "sqlite":
        yield None
        return
    from tests.postgres_schemas import fresh_schema, store_url
    with fresh_schema() as schema:
        yield store_url(schema)


def _licence(data_dir: Path, name: str) -> Licence:
    async def read(opened: Any) -> Licence:
        found: Licence = await opened.get_licence(name)
        return found
    licence: Licence = _read(data_dir, None, read)
    return licence


def _today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_every_change_made_with_the_cli_is_audited_as_cli(tmp_path: Path, backend: str) -> None:
    with _store(backend) as store:
        before = _today()
        created = json.loads(_ok(tmp_path, "--json", "org", "create", "acme", "--seats", "3",
                                 store=store))
        assert created["period_start"] in {before.isoformat(), _today().isoformat()}
        _ok(tmp_path, "user", "add", "--org", "acme", PHONE, store=store)
        _ok(tmp_path, "user", "delete", "--org", "acme", PHONE, store=store)
        token_id = json.loads(_ok(tmp_path, "--json", "token", "create", "--org", "acme",
                                  store=store))["token_id"]
        _ok(tmp_path, "token", "revoke", str(token_id), "--org", "acme", store=store)
        _ok(tmp_path, "org", "admin-add", "--org", "acme", "--email", "a@acme.example",
            store=store)
        _ok(tmp_path, "account", "reset-password", "--email", "a@acme.example", store=store)
        _ok(tmp_path, "operator", "create", "--email", "op@example.net", store=store)

        async def audit(opened: Any) -> tuple[list[AuditEntry], list[AuditEntry]]:
            organisation: Organisation = await opened.get_organisation("acme")
            return (await opened.list_audit(organisation_id=organisation.organisation_id,
                                            limit=100),
                    await opened.list_audit(organisation_id=RELAY_WIDE_AUDIT, limit=100))

        entries, relay_wide = _read(tmp_path, store, audit)
    assert [(entry.actor, entry.action, entry.subject, entry.address)
            for entry in reversed(entries)] == [
        ("cli", "organisation.create", "acme", "local"),
        ("cli", "licence.terms", f"3 seats, monthly from {created['period_start']}", "local"),
        ("cli", "user.declare", PHONE, "local"),
        ("cli", "user.delete", PHONE, "local"),
        ("cli", "token.create", f"token:{token_id}", "local"),
        ("cli", "token.revoke", f"token:{token_id}", "local"),
        ("cli", "account.create", "a@acme.example", "local"),
        ("cli", "account.password_reset", "a@acme.example", "local"),
    ]
    # An operator belongs to no organisation: its account is in the relay-wide entries.
    assert [(entry.actor, entry.action, entry.subject) for entry in relay_wide] == [
        ("cli", "account.create", "op@example.net")]


def test_org_create_records_the_licence_terms_the_api_shows(tmp_path: Path) -> None:
    created = json.loads(_ok(tmp_path, "--json", "org", "create", "acme", "--seats", "4",
                             "--offer", "annual_commitment", "--start", "2026-03-31"))
    assert {key: created[key] for key in ("name", "seats", "state", "offer", "period_start")} \
        == {"name": "acme", "seats": 4, "state": "active", "offer": "annual_commitment",
            "period_start": "2026-03-31"}

    shown = licence_json(_licence(tmp_path, "acme"), [], 0)
    assert (shown["offer"], shown["period_start"]) == ("annual_commitment", "2026-03-31")
    # What the API shows is what the CLI takes.
    _ok(tmp_path, "org", "create", "globex", "--seats", "4", "--offer", shown["offer"],
        "--start", shown["period_start"])
    again = licence_json(_licence(tmp_path, "globex"), [], 0)
    assert (again["offer"], again["period_start"]) == ("annual_commitment", "2026-03-31")
    text = _ok(tmp_path, "org", "create", "initech", "--seats", "2", "--offer", "monthly")
    assert text.startswith("Organisation initech created with 2 seats (monthly from 20")


@pytest.mark.parametrize(("arguments", "message"), [
    (["--seats", "x"], "error: --seats: seats are a whole number between 1 and 1000000, "
                       "not 'x'"),
    (["--seats", "0"], "error: seats must be between 1 and 1000000"),
    (["--seats", "3", "--offer", "yearly"],
     "error: --offer: the offer is monthly or annual_commitment, not 'yearly'"),
    (["--seats", "3", "--offer", "Monthly"],
     "error: --offer: the offer is monthly or annual_commitment, not 'Monthly'"),
    (["--seats", "3", "--start", "2026-02-30"],
     "error: --start: the contract start is a date written YYYY-MM-DD, not '2026-02-30'"),
    (["--seats", "3", "--start", "01/02/2026"],
     "error: --start: the contract start is a date written YYYY-MM-DD, not '01/02/2026'"),
    # Checked after the store is opened, still before anything is written.
    (["--seats", "3", "--offer", "annual_commitment", "--start", "1999-12-31"],
     "error: the contract start is between 2000-01-01 and "),
])
def test_org_create_refuses_bad_values_in_one_line_and_changes_nothing(
        tmp_path: Path, arguments: list[str], message: str) -> None:
    done = _admin(tmp_path, "org", "create", "acme", *arguments)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(message), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    if (tmp_path / "relay.db").exists():
        async def names(opened: Any) -> list[str]:
            return [found.name for found in await opened.list_organisations()]
        assert _read(tmp_path, None, names) == []


def test_an_existing_organisation_is_left_as_it_was(tmp_path: Path) -> None:
    _ok(tmp_path, "org", "create", "acme", "--seats", "3")
    done = _admin(tmp_path, "org", "create", "acme", "--seats", "9", "--offer",
                  "annual_commitment", "--start", "2026-01-01")
    assert (done.returncode, done.stderr) == (1, "error: organisation 'acme' already exists\n")

    kept = _licence(tmp_path, "acme")
    assert (kept.seats, kept.offer.value) == (3, "monthly")


def _admin_commands() -> Iterator[tuple[list[str], Any]]:
    """Every command and group under ``admin`` (typer's own click: duck-typed)."""
    root: Any = typer.main.get_command(app)

    def walk(path: list[str], command: Any) -> Iterator[tuple[list[str], Any]]:
        yield path, command
        for name, child in getattr(command, "commands", {}).items():
            yield from walk([*path, name], child)

    yield from walk(["admin"], root.commands["admin"])


def test_admin_help_shows_every_default_and_no_stray_fragment() -> None:
    """Rich markup used to swallow "[default: ...]" from help texts, leaving "Data directory .";
    every admin command is checked (in-process), and the real command once."""
    runner = CliRunner()
    checked = 0
    for path, command in _admin_commands():
        output = runner.invoke(app, [*path, "--help"], env=_environment()).output
        assert not re.search(r"\s\.(\s|$)", output), (path, output)
        assert "[]" not in output, (path, output)
        for parameter in command.params:
            if "--data-dir" in parameter.opts:
                assert "[default: the configured data_dir, else" in output, path
        checked += 1
    assert checked >= 12
    done = subprocess.run([RELAY, "admin", "org", "create", "--help"], capture_output=True,
                          text=True, timeout=60, env=_environment(), check=True)
    for shown in ("[default: monthly]", "[default: today, UTC]", "--offer", "--start",
                  "annual_commitment", "[default: the configured data_dir, else"):
        assert shown in done.stdout, shown
    assert not re.search(r"\s\.(\s|$)", done.stdout), done.stdout


def test_the_cli_declares_under_the_api_rules(tmp_path: Path) -> None:
    """The CLI acts through the same service as the API: no declaration in a suspended
    organisation (ADMIN_API.md, "Lifecycle")."""
    _ok(tmp_path, "org", "create", "acme", "--seats", "3")

    async def suspend(opened: Any) -> None:
        await opened.suspend_organisation("acme")

    _read(tmp_path, None, suspend)
    done = _admin(tmp_path, "user", "add", "--org", "acme", PHONE)
    assert (done.returncode, done.stderr) == (1, "error: the organisation is suspended\n")

    async def users(opened: Any) -> list[Any]:
        found: list[Any] = await opened.list_users("acme")
        return found

    assert _read(tmp_path, None, users) == []


def test_serve_help_shows_its_defaults() -> None:
    output = CliRunner().invoke(app, ["serve", "--help"], env=_environment()).output
    assert not re.search(r"\s\.(\s|$)", output), output
    for shown in ("[env: CRYPTOPASS_CONFIG]", "[default: json]", "[default: 1]",
                  "[default: host name]", "[default: sqlite in the data directory]"):
        assert shown in output, shown


def test_no_help_of_the_relay_command_loses_a_bracketed_note() -> None:
    """Every command of cryptopass-relay, not only admin: backup, restore, config and serve too."""
    root = typer.main.get_command(app)
    runner = CliRunner()

    def walk(path: list[str], command: Any) -> Iterator[list[str]]:
        yield path
        for name, child in getattr(command, "commands", {}).items():
            yield from walk([*path, name], child)

    paths = list(walk([], root))
    assert ["backup"] in paths and ["restore"] in paths and ["config", "show"] in paths
    for path in paths:
        output = runner.invoke(app, [*path, "--help"], env=_environment()).output
        assert not re.search(r"\s\.(\s|$)", output), (path, output)
        assert "[]" not in output, (path, output)
