"""Group conversations over a real relay on loopback (QUIC, SQLite file): sender keys handed
over pairwise, one MULTI_SEND per message, membership only the members' devices know.

Who must not read a message is shown reading it: the test hands the removed member's (or
device's, or late member's) own saved state the very shared payload the relay stored, with
the header the sender's records held, and the client refuses it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from client.group_messaging import add_member, remove_member
from client.groups import GroupHeader
from client.linking import remove_device
from client.messenger import Messenger
from client.profile import Profile
from crypto.errors import DuplicateMessageError
from crypto.primitives import CryptoError
from relay.settings import RelaySettings
from tests.account_support import (
    TIMEOUT_S,
    enrolled_profile,
    linked_profile,
    received,
)
from tests.conftest import RelayUnderTest, declare
from tests.group_support import (
    SentGroupMessage,
    book_of,
    group_send,
    group_texts,
    start_group,
)

ALICE, BOB, CAROL = "+33612345678", "+33698765432", "+33611111111"
GROUP_SIZE = 50


@pytest.fixture
def relay_settings(tmp_path: Path) -> RelaySettings:
    """Fifty enrolments from one address: more than the default per-address allowance."""
    return RelaySettings(data_dir=tmp_path / "relay", listen_port=0,
                         enrol_starts_per_address=200, enrol_verifies_per_address=200)


def refuses(directory: Path, sent: SentGroupMessage, *,
            chain_id: int | None = None) -> CryptoError:
    """The error with which the device of ``directory``, from its saved chains, refuses
    ``sent`` (optionally relabelled as another chain of the sender)."""
    header = sent.header if chain_id is None else GroupHeader(
        group_id=sent.header.group_id, chain_id=chain_id, iteration=sent.header.iteration,
        digest=sent.header.digest)
    try:
        book_of(directory).open_shared(sent.sender, header, sent.shared)
    except CryptoError as error:
        return error
    raise AssertionError(f"{directory.name} opened a message it must not read")


def chain_ids(directory: Path, sender: tuple[str, int]) -> list[int]:
    [group] = book_of(directory).groups.values()
    return [chain.chain_id for chain in group.chains.get(sender, [])]


async def test_a_group_of_three_devices(relay: RelayUnderTest, tmp_path: Path) -> None:
    alice = await enrolled_profile(relay, tmp_path / "A", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "B", BOB)
    carol = await enrolled_profile(relay, tmp_path / "C", CAROL)
    created = await start_group(alice, "Team", [BOB, CAROL])
    assert (created.devices, created.keys_sent) == (2, 2)

    first = await group_send(alice, "Team", "hello team")
    assert (first.receipt.devices, first.receipt.keys_sent) == (2, 0)  # chains already out
    for profile in (bob, carol):
        assert await group_texts(profile) == [("Team", ALICE, "hello team")]
    reply = await group_send(bob, "Team", "hi from bob")
    assert (reply.receipt.devices, reply.receipt.keys_sent) == (2, 2)
    for profile in (alice, carol):
        assert await group_texts(profile) == [("Team", BOB, "hi from bob")]
    carols = book_of(tmp_path / "C").named("Team")
    assert carols is not None and set(carols.members) == {ALICE, BOB, CAROL}


async def test_a_removed_member_and_a_removed_device_read_nothing_later(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice = await enrolled_profile(relay, tmp_path / "A", ALICE)
    bob_1 = await enrolled_profile(relay, tmp_path / "B1", BOB)
    bob_2 = await linked_profile(relay, bob_1, tmp_path / "B2")
    carol = await enrolled_profile(relay, tmp_path / "C", CAROL)
    await start_group(alice, "Team", [BOB, CAROL])
    before = await group_send(alice, "Team", "before")
    for profile in (bob_1, bob_2, carol):
        assert await group_texts(profile) == [("Team", ALICE, "before")]
    old_chain = before.header.chain_id
    assert chain_ids(tmp_path / "C", before.sender) == [old_chain]

    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(alice) as messenger:
            removal = await remove_member(messenger, "Team", CAROL)
    assert removal.rekeyed and removal.devices == 2  # Bob's two devices; Carol none
    after = await group_send(alice, "Team", "after carol left")
    assert after.header.chain_id != old_chain
    for profile in (bob_1, bob_2):
        assert await group_texts(profile) == [("Team", ALICE, "after carol left")]
    assert await received(carol) == []  # the relay addressed nothing to her
    # Carol's device, holding Alice's old chain, cannot open what the relay stored:
    refuses(tmp_path / "C", after)
    refuses(tmp_path / "C", after, chain_id=old_chain)  # nor relabelled as the old chain
    # Bob applied the removal too: his next message is under a new chain of his own.
    bob_after = await group_send(bob_1, "Team", "bob after carol left")
    assert bob_after.receipt.rekeyed
    refuses(tmp_path / "C", bob_after)
    for profile in (alice, bob_2):  # Bob's other device gets a copy, as members do
        assert await group_texts(profile) == [("Team", BOB, "bob after carol left")]

    # Bob removes his second device: Alice's next message re-keys, and B2 cannot read it.
    assert await received(bob_1) == []  # what B2 sent its own account first (control only)
    bob_2_id = bob_2.data.device_id
    assert bob_2_id is not None
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(bob_1) as messenger:
            await remove_device(messenger, bob_2_id)
    device_gone = await group_send(alice, "Team", "after bob's phone left")
    assert device_gone.receipt.rekeyed and device_gone.receipt.devices == 1
    assert device_gone.header.chain_id != after.header.chain_id
    assert await group_texts(bob_1) == [("Team", ALICE, "after bob's phone left")]
    assert after.header.chain_id in chain_ids(tmp_path / "B2", after.sender)
    refuses(tmp_path / "B2", device_gone)
    refuses(tmp_path / "B2", device_gone, chain_id=after.header.chain_id)


async def test_a_member_added_later_reads_nothing_earlier(relay: RelayUnderTest,
                                                          tmp_path: Path) -> None:
    alice = await enrolled_profile(relay, tmp_path / "A", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "B", BOB)
    carol = await enrolled_profile(relay, tmp_path / "C", CAROL)
    await start_group(alice, "Team", [BOB])
    earlier = await group_send(alice, "Team", "before carol")
    assert await group_texts(bob) == [("Team", ALICE, "before carol")]
    bob_earlier = await group_send(bob, "Team", "bob before carol")
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(alice) as messenger:
            added = await add_member(messenger, "Team", CAROL)
    assert added.keys_sent == 1 and not added.rekeyed
    later = await group_send(alice, "Team", "welcome carol")
    assert later.header.chain_id == earlier.header.chain_id  # the same chain, further on
    assert await group_texts(carol) == [("Team", ALICE, "welcome carol")]
    assert isinstance(refuses(tmp_path / "C", earlier), DuplicateMessageError)
    assert await group_texts(bob) == [("Team", ALICE, "welcome carol")]
    bob_later = await group_send(bob, "Team", "hello carol")  # Bob hands Carol his chain now
    assert bob_later.receipt.keys_sent == 1
    assert await group_texts(carol) == [("Team", BOB, "hello carol")]
    assert isinstance(refuses(tmp_path / "C", bob_earlier), DuplicateMessageError)


def stored_rows(database: Path) -> list[tuple[str, tuple[object, ...]]]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        tables = [name for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        return [(table, row) for table in tables
                for row in connection.execute(f'SELECT * FROM "{table}"')]


async def test_no_stored_row_names_the_group(relay: RelayUnderTest, tmp_path: Path) -> None:
    name = "Marker-Group-7f3a9c51"
    alice = await enrolled_profile(relay, tmp_path / "A", ALICE)
    await enrolled_profile(relay, tmp_path / "B", BOB)
    await enrolled_profile(relay, tmp_path / "C", CAROL)
    await start_group(alice, name, [BOB, CAROL])
    sent = await group_send(alice, name, "Marker-Text-0d9e2b")
    group_id = sent.header.group_id
    database = relay.data_dir / "relay.db"
    rows = stored_rows(database)
    assert rows  # the queued envelopes are there
    markers = [group_id, name.encode(), group_id.hex().encode(), b"Marker-Text-0d9e2b"]
    for table, row in rows:
        for value in row:
            raw = value if isinstance(value, bytes) else str(value).encode()
            assert not any(marker in raw for marker in markers), (table, row)
    shared_copies = [row for _, row in rows if sent.shared in row]
    assert len(shared_copies) == 1  # stored once, whatever the number of devices
    for path in (database, database.with_name("relay.db-wal")):
        if path.exists():
            content = path.read_bytes()
            assert not any(marker in content for marker in markers), path


async def test_a_group_of_fifty_devices(relay: RelayUnderTest, tmp_path: Path) -> None:
    phones = [f"+336200{index:05d}" for index in range(GROUP_SIZE)]
    await declare(relay.data_dir, "big", *phones, seats=GROUP_SIZE)
    profiles = [await enrolled_profile(relay, tmp_path / f"P{index}", phone)
                for index, phone in enumerate(phones)]
    created = await start_group(profiles[0], "Fifty", phones[1:])
    assert (created.devices, created.keys_sent) == (GROUP_SIZE - 1, GROUP_SIZE - 1)
    sent = await group_send(profiles[0], "Fifty", "to all fifty")
    assert sent.receipt.devices == GROUP_SIZE - 1
    readers: dict[int, list[tuple[str, str, str]]] = {}

    async def read(index: int) -> None:
        readers[index] = await group_texts(profiles[index])

    async with trio.open_nursery() as nursery:
        for index in range(1, GROUP_SIZE):
            nursery.start_soon(read, index)
    assert readers == {index: [("Fifty", phones[0], "to all fifty")]
                       for index in range(1, GROUP_SIZE)}


def user_of(profile: Profile) -> str:
    user_id = profile.data.user_id
    assert user_id is not None
    return user_id


async def test_a_group_message_goes_sealed_once_every_member_can_be_sealed_to(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    """Members share their profile keys as they hand over their chains; once the sender holds
    every recipient's delivery token, the group message goes sealed: the envelopes the relay
    stores name no sender, and the members still read it as the sender's, in the group."""
    alice = await enrolled_profile(relay, tmp_path / "A", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "B", BOB)
    carol = await enrolled_profile(relay, tmp_path / "C", CAROL)
    created = await start_group(alice, "Team", [BOB, CAROL])
    assert not created.sealed  # Alice holds no member's token yet
    for profile in (bob, carol):
        assert await group_texts(profile) == []
    for profile, text in ((bob, "from bob"), (carol, "from carol")):  # each shares its key
        await group_send(profile, "Team", text)
    assert await group_texts(bob) == [("Team", CAROL, "from carol")]
    assert await group_texts(carol) == [("Team", BOB, "from bob")]
    assert await group_texts(alice) == [("Team", BOB, "from bob"), ("Team", CAROL, "from carol")]

    sealed = await group_send(alice, "Team", "sealed to the team")
    assert sealed.receipt.sealed and sealed.receipt.devices == 2
    with sqlite3.connect(f"file:{relay.data_dir / 'relay.db'}?mode=ro", uri=True) as database:
        envelopes = database.execute(
            "SELECT * FROM envelopes WHERE shared_id IN (SELECT shared_id FROM shared_payloads"
            " WHERE payload = ?)", (sealed.shared,)).fetchall()
    assert len(envelopes) == 2  # one per device, the shared payload once
    assert not any(user_of(alice) in row for row in envelopes), envelopes
    for profile in (bob, carol):
        [message] = await received(profile)
        assert message.sealed and message.group == "Team" and message.content is not None
        assert (message.content.sender_phone, message.content.text) == (
            ALICE, "sealed to the team")
        assert message.sender is not None and message.sender.user_id == user_of(alice)


async def test_a_refused_token_sends_the_group_message_identified(relay: RelayUnderTest,
                                                                  tmp_path: Path) -> None:
    """Bob rotates his profile key before Alice learns the new one: the relay refuses her
    sealed send (his old token), nothing is stored for it, and the message goes identified."""
    alice = await enrolled_profile(relay, tmp_path / "A", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "B", BOB)
    await start_group(alice, "Pair", [BOB])
    assert await group_texts(bob) == []
    await group_send(bob, "Pair", "bob's key comes with this")
    assert await group_texts(alice) == [("Pair", BOB, "bob's key comes with this")]
    assert (await group_send(alice, "Pair", "sealed")).receipt.sealed
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(bob) as messenger:
            await messenger.rotate_profile_key()  # Alice's copy of the new key waits unread
    fallback = await group_send(alice, "Pair", "after the rotation")
    assert not fallback.receipt.sealed and fallback.receipt.devices == 1
    assert [(message.content.text if message.content else None, message.sealed)
            for message in await received(bob)] == [("sealed", True),
                                                     ("after the rotation", False)]
