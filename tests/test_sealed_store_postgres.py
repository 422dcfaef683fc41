"""On PostgreSQL (a cluster's store), a sealed send and a bundle fetch leave no row naming both
users: every table of the schema is dumped after them. Fails, not skips, without the server
when CI is set (tests/postgres_schemas.py)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
import trio
from psycopg import sql

from relay.server import RunningRelay, serve
from relay.settings import RelaySettings
from tests.conftest import RelayUnderTest, SmsInbox, enrol
from tests.postgres_schemas import conninfo, fresh_schema, store_url
from tests.relay_processes import declare
from tests.sealed_support import anonymous, assert_no_row_links, mentions, receive, token_and_hash

PHONE_A, PHONE_B = "+33612345678", "+33698765432"


@pytest.fixture
def schema() -> Iterator[str]:
    with fresh_schema() as name:
        yield name


@pytest.fixture
async def postgres_relay(schema: str, tmp_path: Path,
                         nursery: trio.Nursery) -> AsyncIterator[RelayUnderTest]:
    settings = RelaySettings(data_dir=tmp_path / "relay", listen_port=0, store=store_url(schema))
    settings.data_dir.mkdir(parents=True)
    await declare(store_url(schema), settings.data_dir, (PHONE_A, PHONE_B), organisation="acme")
    sms = SmsInbox()
    running: RunningRelay = await nursery.start(
        lambda task_status: serve(settings, task_status=task_status, on_sms_sent=sms))
    yield RelayUnderTest(data_dir=settings.data_dir, running=running, sms=sms)
    running.stop()


def dump_schema(schema: str) -> dict[str, list[tuple[object, ...]]]:
    with psycopg.connect(conninfo(schema)) as connection:
        tables = [name for (name,) in connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,)).fetchall()]
        return {table: connection.execute(sql.SQL("SELECT * FROM {}").format(
            sql.Identifier(table))).fetchall() for table in tables}


async def test_no_postgresql_row_links_the_sender_of_a_sealed_send_or_a_bundle_fetch(
        postgres_relay: RelayUnderTest, schema: str) -> None:
    alice, bob = await enrol(postgres_relay, PHONE_A), await enrol(postgres_relay, PHONE_B)
    token, token_hash = token_and_hash()
    async with postgres_relay.connect() as bob_client:
        await bob_client.authenticate(bob.user_id, bob.device_id, bob.key)
        await bob_client.set_delivery_token(token_hash)
    async with postgres_relay.connect() as alice_client:
        await alice_client.authenticate(alice.user_id, alice.device_id, alice.key)
        await alice_client.fetch_bundle(bob.user_id)  # the bucket per (requester, target)
    async with anonymous(postgres_relay) as sealed:
        await sealed.sealed_send(bob.user_id, {bob.device_id: b"sealed on postgres"},
                                 client_message_id=secrets.token_bytes(16), delivery_token=token)
    rows = dump_schema(schema)
    assert rows["rate_limits"], "the bundle-fetch buckets are rows on PostgreSQL"
    assert any(mentions(row, "bundle-pair") for row in rows["rate_limits"])
    assert_no_row_links(rows, alice.user_id, bob.user_id)
    async with postgres_relay.connect() as bob_client:
        await bob_client.authenticate(bob.user_id, bob.device_id, bob.key)
        [delivered] = await receive(bob_client, 1)
    assert delivered.sealed and delivered.ciphertext == b"sealed on postgres"
