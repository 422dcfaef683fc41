"""The enrolment secret lives in a file of its own (0600), never in the store.

A relay creates it once; a secret an earlier version kept in the store is moved out to the file
once (its row deleted) and the codes sent under it still verify; a relay whose file is missing
or is not the store's refuses to start and says what to do; a cluster's nodes read one secret,
and a node without it refuses rather than make another; ``secret create`` makes the file
beforehand; ``backup`` says that the secret is not in the backup, and warns if it is missing.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from typer.testing import CliRunner

from bench.spawn import BIN
from enrolment import admin
from enrolment.codes import SECRET_BYTES, secret_fingerprint
from enrolment.service import EnrolmentService
from enrolment.sms import OutboxGateway, SmsDispatcher, SmsMessage
from relay.cli import app
from relay.config import load_config, masked
from relay.enrolment_secret import (
    ENROLMENT_SECRET_FILE_NAME,
    LEGACY_SECRET_NAME,
    EnrolmentSecretError,
    create_enrolment_secret,
    enrolment_secret_path,
    load_enrolment_secret,
    read_secret_file,
    write_secret_file,
)
from storage import sqlite_schema
from storage.base import Store
from storage.enrolment_sql import SQLITE_ENROLMENT_GUESS_TABLES
from storage.postgres import open_postgres_store
from storage.sqlite import open_sqlite_store
from tests.postgres_schemas import conninfo, fresh_schema, store_url
from tests.test_enrolment_service import new_account

T0 = 1_700_000_000_000
DECLARED = "+33612345678"
ADDRESS = "192.0.2.1"
WAIT_S = 30
"""Bound on anything that could hang, not a timing assertion."""
LEGACY = bytes(range(100, 132))
"""The secret an earlier version kept in the store."""

runner = CliRunner()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def legacy_rows(database: Path) -> list[tuple[str, bytes]]:
    with sqlite3.connect(database) as connection:
        return connection.execute("SELECT name, value FROM secrets").fetchall()


def put_legacy_secret(database: Path, value: bytes) -> None:
    """What an earlier version left: the secret in the store's ``secrets`` table."""
    with sqlite3.connect(database) as connection:
        connection.execute("INSERT INTO secrets (name, value) VALUES (?, ?)",
                           (LEGACY_SECRET_NAME, value))


def database_bytes(database: Path) -> bytes:
    return b"".join(path.read_bytes() for path in database.parent.glob(database.name + "*"))


# -- the file ------------------------------------------------------------------------------


def test_the_file_is_private_whole_and_never_written_through_a_link(tmp_path: Path) -> None:
    path = tmp_path / ENROLMENT_SECRET_FILE_NAME
    secret = bytes(range(32))
    old_umask = os.umask(0)  # even a careless umask gets 0600
    try:
        assert write_secret_file(path, secret)
    finally:
        os.umask(old_umask)
    assert mode(path) == 0o600
    assert path.read_bytes() == secret.hex().encode() + b"\n"
    assert read_secret_file(path) == secret
    assert not write_secret_file(path, bytes(32))  # an existing file is kept
    assert read_secret_file(path) == secret
    assert [entry.name for entry in tmp_path.iterdir()] == [path.name]  # no temporary left

    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"someone else's file")
    planted = tmp_path / "planted.secret"
    planted.symlink_to(elsewhere)
    assert not write_secret_file(planted, secret)  # never written through a link...
    assert elsewhere.read_bytes() == b"someone else's file"
    dangling = tmp_path / "dangling.secret"
    dangling.symlink_to(tmp_path / "nowhere")
    assert not write_secret_file(dangling, secret)  # ...even one to nothing yet
    assert not (tmp_path / "nowhere").exists()
    mounted = tmp_path / "mounted.secret"  # ...but read through one: secret managers do that
    mounted.symlink_to(path)
    assert read_secret_file(mounted) == secret
    with pytest.raises(EnrolmentSecretError, match="not a regular file"):
        read_secret_file(tmp_path)
    assert read_secret_file(tmp_path / "missing") is None


@pytest.mark.parametrize("content", [b"", b"00" * 31 + b"\n", b"zz" * 32, b"00" * 33,
                                     bytes(32)],
                         ids=["empty", "short", "not hexadecimal", "long", "raw bytes"])
def test_a_file_that_holds_no_secret_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "enrolment.secret"
    path.write_bytes(content)
    with pytest.raises(EnrolmentSecretError, match=re.escape(str(path))):
        read_secret_file(path)


def test_the_path_is_a_setting_and_shown_unmasked(tmp_path: Path) -> None:
    assert enrolment_secret_path(tmp_path, None) == tmp_path / "enrolment.secret"
    assert enrolment_secret_path(tmp_path, Path("/run/secrets/e")) == Path("/run/secrets/e")
    loaded = load_config(environ={"CRYPTOPASS_ENROLMENT_SECRET_FILE": "/run/secrets/e"})
    assert loaded.settings.enrolment_secret_file == Path("/run/secrets/e")
    assert masked(loaded.settings)["enrolment_secret_file"] == "/run/secrets/e"  # a place


# -- a single relay (SQLite) -------------------------------------------------------------------


@dataclass
class DataDir:
    path: Path

    @property
    def database(self) -> Path:
        return self.path / "relay.db"

    @property
    def secret_file(self) -> Path:
        return self.path / ENROLMENT_SECRET_FILE_NAME

    async def load(self) -> bytes:
        async with open_sqlite_store(self.database) as store:
            return await load_enrolment_secret(store, self.secret_file, cluster=False)


@pytest.fixture
def data_dir(tmp_path: Path) -> DataDir:
    (tmp_path / "data").mkdir()
    return DataDir(tmp_path / "data")


async def test_a_new_relay_creates_its_secret_in_a_private_file_only(data_dir: DataDir) -> None:
    secret = await data_dir.load()
    assert len(secret) == SECRET_BYTES
    assert read_secret_file(data_dir.secret_file) == secret
    assert mode(data_dir.secret_file) == 0o600
    assert secret not in database_bytes(data_dir.database)
    assert secret.hex().encode() not in database_bytes(data_dir.database)
    assert legacy_rows(data_dir.database) == []
    assert await data_dir.load() == secret  # the same at every start


async def test_a_relay_that_lost_its_file_refuses_until_told_to_start_again(
        data_dir: DataDir) -> None:
    await data_dir.load()
    data_dir.secret_file.unlink()
    with pytest.raises(EnrolmentSecretError) as refused:
        await data_dir.load()
    message = str(refused.value)
    assert str(data_dir.secret_file) in message
    assert "restore the file from your backup" in message
    assert "cryptopass-relay secret create --replace" in message
    assert not data_dir.secret_file.exists()  # refused: nothing made up
    async with open_sqlite_store(data_dir.database) as store:
        await create_enrolment_secret(store, data_dir.secret_file, replace=True)
    assert await data_dir.load() == read_secret_file(data_dir.secret_file)


async def test_a_secret_that_cannot_be_written_stops_the_relay_and_says_where(
        data_dir: DataDir) -> None:
    nowhere = data_dir.path / "missing" / "enrolment.secret"
    async with open_sqlite_store(data_dir.database) as store:
        with pytest.raises(EnrolmentSecretError,
                           match=f"cannot write the enrolment secret {re.escape(str(nowhere))}"):
            await load_enrolment_secret(store, nowhere, cluster=False)
        assert await store.secret_fingerprint(LEGACY_SECRET_NAME) is None  # nothing kept


async def test_a_file_that_is_not_the_stores_secret_is_refused(data_dir: DataDir) -> None:
    await data_dir.load()
    write_secret_file(data_dir.secret_file, bytes(range(32)), replace=True)
    with pytest.raises(EnrolmentSecretError, match="is not the one this store was used with"):
        await data_dir.load()


# -- the move out of the store -------------------------------------------------------------


async def send_code(store: Store, secret: bytes, tmp_path: Path) -> str:
    """Ask for a code for DECLARED as a relay holding ``secret`` would; return the code."""
    send_delivered, delivered = trio.open_memory_channel[SmsMessage](1)
    dispatcher = SmsDispatcher(OutboxGateway(tmp_path / "outbox.jsonl"), workers=1,
                               on_sent=send_delivered.send_nowait)
    async with trio.open_nursery() as nursery:
        await nursery.start(dispatcher.run)
        service = EnrolmentService(store, dispatcher, secret=secret)
        await service.start(DECLARED, T0, address=ADDRESS)
        with trio.fail_after(WAIT_S):
            message = await delivered.receive()
        nursery.cancel_scope.cancel()
    match = re.search(r"\b(\d{6})\b", message.body)
    assert match is not None
    return match.group(1)


async def verify(store: Store, secret: bytes, code: str) -> None:
    service = EnrolmentService(store, SmsDispatcher(OutboxGateway(Path("unused"))),
                               secret=secret)
    account = new_account()
    await service.verify(DECLARED, code, account.identity_key, account.account_key,
                         account.device_list, T0 + 1, address=ADDRESS)


@pytest.fixture
async def upgraded(data_dir: DataDir, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """A store as an earlier version left it: of the schema before the enrolment secret left
    it, its secret in the ``secrets`` table, and a code sent under it still pending. Yields
    the code."""
    (before,) = [index for index, migration in enumerate(sqlite_schema.MIGRATIONS)
                 if migration.statements == SQLITE_ENROLMENT_GUESS_TABLES]
    with monkeypatch.context() as older:
        older.setattr(sqlite_schema, "MIGRATIONS", sqlite_schema.MIGRATIONS[:before])
        older.setattr(sqlite_schema, "LATEST_SCHEMA_VERSION", before)
        async with open_sqlite_store(data_dir.database) as store:
            await admin.create_organisation(store, "acme", 10, T0)
            await admin.declare_user(store, "acme", DECLARED, T0)
            put_legacy_secret(data_dir.database, LEGACY)
            code = await send_code(store, LEGACY, tmp_path)
    yield code


async def test_a_secret_in_the_store_moves_out_once_and_its_codes_still_verify(
        data_dir: DataDir, upgraded: str) -> None:
    assert await data_dir.load() == LEGACY
    assert read_secret_file(data_dir.secret_file) == LEGACY
    assert mode(data_dir.secret_file) == 0o600
    assert legacy_rows(data_dir.database) == []  # the row is gone...
    assert LEGACY not in database_bytes(data_dir.database)  # ...and so are its bytes
    async with open_sqlite_store(data_dir.database) as store:
        assert await store.secret_fingerprint(LEGACY_SECRET_NAME) == secret_fingerprint(LEGACY)
        await verify(store, await load_enrolment_secret(store, data_dir.secret_file,
                                                        cluster=False), upgraded)
    assert await data_dir.load() == LEGACY  # once: later starts read the file


@pytest.mark.parametrize("in_file", [LEGACY, bytes(range(32))], ids=["the same", "another"])
async def test_a_secret_left_in_the_store_beside_the_file_is_deleted(
        data_dir: DataDir, upgraded: str, in_file: bytes) -> None:
    write_secret_file(data_dir.secret_file, in_file)
    assert await data_dir.load() == in_file  # the file wins
    assert legacy_rows(data_dir.database) == []


# -- a cluster (PostgreSQL) ----------------------------------------------------------------------


@pytest.fixture
def cluster_schema() -> Iterator[str]:
    with fresh_schema() as schema:
        yield schema


async def test_a_cluster_node_without_the_file_refuses_clearly(cluster_schema: str,
                                                               tmp_path: Path) -> None:
    first, second = tmp_path / "node-1" / "enrolment.secret", tmp_path / "node-2" / "e.secret"
    first.parent.mkdir()
    second.parent.mkdir()
    async with open_postgres_store(conninfo(cluster_schema)) as store:
        secret = await load_enrolment_secret(store, first, cluster=True)  # the first node
        with pytest.raises(EnrolmentSecretError) as refused:
            await load_enrolment_secret(store, second, cluster=True)
        assert str(second) in str(refused.value)
        assert "Copy the file from another node" in str(refused.value)
        assert not second.exists()  # no second secret made up
        write_secret_file(second, bytes(range(32)))
        with pytest.raises(EnrolmentSecretError, match="the other nodes of the cluster read"):
            await load_enrolment_secret(store, second, cluster=True)
        write_secret_file(second, secret, replace=True)  # a copy of the cluster's file
        assert await load_enrolment_secret(store, second, cluster=True) == secret

    # The command line says so, and the node does not start.
    data_dir = tmp_path / "node-3"
    result = await trio.run_process(
        [str(BIN / "cryptopass-relay"), "serve", "--data-dir", str(data_dir), "--listen",
         "127.0.0.1:0", "--store", store_url(cluster_schema), "--node-name", "node-3"],
        capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 1
    assert (f"error: cannot start: no enrolment secret at {data_dir / 'enrolment.secret'}, "
            "and the cluster has one").encode() in result.stderr


async def test_two_new_nodes_starting_at_once_agree_on_one_secret(cluster_schema: str,
                                                                  tmp_path: Path) -> None:
    paths = [tmp_path / f"node-{number}.secret" for number in range(4)]
    outcomes: dict[Path, bytes | EnrolmentSecretError] = {}

    async def start(path: Path) -> None:
        async with open_postgres_store(conninfo(cluster_schema)) as store:
            try:
                outcomes[path] = await load_enrolment_secret(store, path, cluster=True)
            except EnrolmentSecretError as error:
                outcomes[path] = error

    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            for path in paths:
                nursery.start_soon(start, path)
    secrets_read = {outcome for outcome in outcomes.values() if isinstance(outcome, bytes)}
    assert len(secrets_read) == 1  # whoever started, one secret
    for path, outcome in outcomes.items():
        assert path.exists() == isinstance(outcome, bytes)  # a loser leaves no file behind


# -- the command line ------------------------------------------------------------------------


def invoke(*arguments: str) -> tuple[int, str]:
    result = runner.invoke(app, list(arguments), env={"CRYPTOPASS_CONFIG": ""})
    return result.exit_code, result.output


def test_secret_create_makes_the_file_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    code, output = invoke("secret", "create", "--data-dir", str(data_dir))
    assert code == 0, output
    path = data_dir / "enrolment.secret"
    assert f"created in {path} (mode 0600)" in " ".join(output.split())
    assert mode(path) == 0o600
    secret = read_secret_file(path)
    code, output = invoke("secret", "create", "--data-dir", str(data_dir))
    assert code == 1 and "exists already" in output
    assert read_secret_file(path) == secret
    assert trio.run(DataDir(data_dir).load) == secret  # the relay reads it


def test_secret_create_moves_an_earlier_versions_secret_out(tmp_path: Path) -> None:
    data_dir = DataDir(tmp_path / "data")
    data_dir.path.mkdir()

    async def make_store() -> None:
        async with open_sqlite_store(data_dir.database):
            pass

    trio.run(make_store)
    put_legacy_secret(data_dir.database, LEGACY)
    elsewhere = tmp_path / "secrets" / "enrolment"
    elsewhere.parent.mkdir()
    code, output = invoke("secret", "create", "--data-dir", str(data_dir.path), "--file",
                          str(elsewhere))
    assert code == 0, output
    assert "moved out of the store" in output
    assert read_secret_file(elsewhere) == LEGACY
    assert legacy_rows(data_dir.database) == []


def test_secret_create_will_not_make_a_second_secret_for_a_cluster(cluster_schema: str,
                                                                   tmp_path: Path) -> None:
    url = store_url(cluster_schema)
    first, second = tmp_path / "first.secret", tmp_path / "second.secret"
    assert invoke("secret", "create", "--store", url, "--file", str(first))[0] == 0
    code, output = invoke("secret", "create", "--store", url, "--file", str(second))
    assert code == 1
    assert "used with an enrolment secret already" in " ".join(output.split())
    assert not second.exists()


def test_backup_says_the_secret_is_not_in_it_and_warns_if_it_is_missing(
        data_dir: DataDir, tmp_path: Path) -> None:
    trio.run(data_dir.load)
    code, output = invoke("backup", "--to", str(tmp_path / "one.db"), "--data-dir",
                          str(data_dir.path))
    assert code == 0, output
    assert f"the enrolment secret {data_dir.secret_file} is not in the backup" in output
    assert "warning" not in output
    secret = read_secret_file(data_dir.secret_file)
    assert secret is not None and secret not in (tmp_path / "one.db").read_bytes()

    data_dir.secret_file.unlink()
    code, output = invoke("backup", "--to", str(tmp_path / "two.db"), "--data-dir",
                          str(data_dir.path))
    assert code == 0, output  # the backup is taken all the same
    assert f"warning: no enrolment secret at {data_dir.secret_file}" in " ".join(output.split())
    assert (tmp_path / "two.db").exists()
