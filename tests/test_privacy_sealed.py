"""The relay's SQLite file and write-ahead log hold no record of a sealed sender.

Rows are checked in `test_sealed_e2e.py`; here the bytes. A stored envelope (and the indexes
over it) puts the two users' ids within a few bytes of each other, recipient then sender in the
row, sender then recipient in an index: so any identified message between Alice and Bob leaves
one id closely followed by the other somewhere in the database file or its WAL (pages are
rewritten, and freed pages keep old bytes). Here Bob holds Alice's profile key from the start
(as if she had shared it), so that everything between them goes sealed: no such trace may
appear, while the relay runs and after it delivered. The same search finds the trace one
identified message leaves, so it would catch a regression.
"""

from __future__ import annotations

import re
from pathlib import Path

import trio

from client.messenger import Messenger
from client.profile import Profile
from tests.account_support import TIMEOUT_S, enrolled_profile, received
from tests.conftest import RelayUnderTest
from tests.test_sealed_e2e import ALICE, BOB, send_text, user_id

_GAP_BYTES = 2
"""Bytes between two user ids in one SQLite record (a row or an index entry): the device id
between them takes 0 to 2 bytes of the record's body. Two entries of an index over user ids
alone (the users table's, say) are further apart: a row id, then the next cell's sizes and
header, at least 5 bytes; they name one user each and link nobody."""


def linked_in_bytes(data_dir: Path, first: str, second: str) -> bool:
    """True if the database file or its WAL hold either user id closely followed by the other,
    as an envelope row or index entry does."""
    patterns = [re.compile(re.escape(one.encode()) + b".{0,%d}" % _GAP_BYTES
                           + re.escape(other.encode()), re.DOTALL)
                for one, other in ((first, second), (second, first))]
    for name in ("relay.db", "relay.db-wal"):
        path = data_dir / name
        if path.exists():
            data = path.read_bytes()
            if any(pattern.search(data) for pattern in patterns):
                return True
    return False


async def send_identified(profile: Profile, phone: str, text: str) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(profile) as messenger:
            messenger.seal_by_default = False
            receipt = await messenger.send_text(phone, text)
    assert not receipt.sealed


async def test_sealed_messages_leave_no_sender_in_the_database_file_or_its_wal(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    alice = await enrolled_profile(relay, tmp_path / "alice", ALICE)
    bob = await enrolled_profile(relay, tmp_path / "bob", BOB)
    with trio.fail_after(TIMEOUT_S):
        async with Messenger.connect(alice) as messenger:  # makes and registers her token
            alice_key = messenger.sealed.profile_key
        async with Messenger.connect(bob) as messenger:
            contact = await messenger.contact(ALICE)
            async with messenger.exclusive():
                contact.profile_key = alice_key
    for text in ("one", "two", "three"):
        assert await send_text(bob, ALICE, text)
    assert not linked_in_bytes(relay.data_dir, user_id(alice), user_id(bob))
    assert [m.content.text for m in await received(alice) if m.content] == [
        "one", "two", "three"]
    assert not linked_in_bytes(relay.data_dir, user_id(alice), user_id(bob))
    # The control: one identified message from Bob leaves exactly the trace searched for.
    await send_identified(bob, ALICE, "identified")
    assert linked_in_bytes(relay.data_dir, user_id(alice), user_id(bob))
