"""What a device accepts of a group (client/groups.py), without a relay: who may hand it a
chain, change the members or write in the group, and what a relay swapping payloads gets."""

from __future__ import annotations

import hashlib

import msgpack
import pytest

from client.groups import (
    MAX_CHAINS_PER_DEVICE,
    MAX_GROUP_MEMBERS,
    Group,
    GroupBook,
    GroupContentError,
    GroupHeader,
    GroupKey,
    NoSenderKeyError,
    decode_group_content,
    decode_group_pairwise,
    encode_group_header,
    encode_group_key,
    encode_group_membership,
    encode_group_text,
)
from client.message_content import ContentError, decode_content
from crypto.errors import DuplicateMessageError, MalformedMessageError
from crypto.primitives import SeededRandom
from crypto.sender_keys import SendingChain

GROUP_ID = bytes(range(32))
ALICE, BOB, MALLORY = ("alice", 1), ("bob", 1), ("mallory", 1)
MEMBERS = {"+33612345678": "alice", "+33698765432": "bob"}


def alices_group() -> tuple[Group, SendingChain]:
    group = Group(group_id=GROUP_ID, name="Team", members=dict(MEMBERS), revision=1)
    return group, group.sending_chain(SeededRandom(b"alice"))


def key_from(group: Group, chain: SendingChain) -> GroupKey:
    decoded = decode_content(encode_group_key(group, chain.distribution()))
    assert isinstance(decoded, GroupKey)
    return decoded


def sent(group: Group, chain: SendingChain, content: bytes) -> tuple[GroupHeader, bytes]:
    message = chain.encrypt(content)
    shared = message.body()
    header = decode_content(encode_group_header(group.group_id, message, shared))
    assert isinstance(header, GroupHeader)
    return header, shared


def bobs_book(key: GroupKey) -> GroupBook:
    book = GroupBook()
    book.accept_key(ALICE, key, own_user_id="bob")
    return book


def test_a_member_joins_from_a_key_and_reads_the_text() -> None:
    group, chain = alices_group()
    book = bobs_book(key_from(group, chain))
    header, shared = sent(group, chain, encode_group_text(
        sender_phone="+33612345678", text="hello", sent_at="2026-01-01T00:00:00.000+00:00"))
    plaintext = book.open_shared(ALICE, header, shared)
    shown = book.opened(ALICE, GROUP_ID, plaintext)
    assert shown is not None and shown[0] == "Team" and shown[1].text == "hello"
    with pytest.raises(DuplicateMessageError):
        book.open_shared(ALICE, header, shared)


def test_a_key_for_a_group_that_does_not_list_this_user_or_its_sender_is_ignored() -> None:
    group, chain = alices_group()
    book = GroupBook()
    book.accept_key(ALICE, key_from(group, chain), own_user_id="carol")  # not listed
    book.accept_key(MALLORY, key_from(group, chain), own_user_id="bob")  # sender not listed
    assert book.groups == {}


def test_a_non_member_can_neither_hand_a_chain_nor_write_nor_change_the_members() -> None:
    group, chain = alices_group()
    book = bobs_book(key_from(group, chain))
    forged = Group(group_id=GROUP_ID, name="Team",
                   members={**MEMBERS, "+33600000000": "mallory"}, revision=9)
    mallory_chain = forged.sending_chain(SeededRandom(b"mallory"))
    book.accept_key(MALLORY, key_from(forged, mallory_chain), own_user_id="bob")
    bobs = book.groups[GROUP_ID]
    assert bobs.members == MEMBERS and bobs.revision == 1 and MALLORY not in bobs.chains
    header, shared = sent(forged, mallory_chain, encode_group_membership(
        forged, sender_phone="+33600000000"))
    with pytest.raises(NoSenderKeyError):
        book.open_shared(MALLORY, header, shared)


def test_a_member_cannot_write_under_another_members_chain() -> None:
    """The chain is looked up by the device the relay authenticated, not by the header."""
    group, chain = alices_group()
    book = bobs_book(key_from(group, chain))
    header, shared = sent(group, chain, encode_group_text(
        sender_phone="+33612345678", text="x", sent_at="t"))
    book.groups[GROUP_ID].members["+33622222222"] = "carol"
    with pytest.raises(NoSenderKeyError):
        book.open_shared(("carol", 1), header, shared)


def test_a_relay_swapping_shared_payloads_gets_nothing_opened() -> None:
    group, chain = alices_group()
    book = bobs_book(key_from(group, chain))
    first_header, _ = sent(group, chain, encode_group_text(
        sender_phone="+33612345678", text="one", sent_at="t"))
    _, second_shared = sent(group, chain, encode_group_text(
        sender_phone="+33612345678", text="two", sent_at="t"))
    with pytest.raises(MalformedMessageError):
        book.open_shared(ALICE, first_header, second_shared)
    assert book.groups[GROUP_ID].chains[ALICE][0].iteration == 0  # nothing moved


def test_membership_changes_apply_only_when_newer_and_a_removal_rekeys() -> None:
    group, chain = alices_group()
    book = bobs_book(key_from(group, chain))
    bobs = book.groups[GROUP_ID]
    bobs.sending_chain(SeededRandom(b"bob"))
    bobs.distributed = {ALICE}
    with_carol = Group(group_id=GROUP_ID, name="Team",
                       members={**MEMBERS, "+33611111111": "carol"}, revision=2)
    header, shared = sent(group, chain, encode_group_membership(
        with_carol, sender_phone="+33612345678"))
    assert book.opened(ALICE, GROUP_ID, book.open_shared(ALICE, header, shared)) is None
    assert bobs.revision == 2 and "+33611111111" in bobs.members
    assert bobs.own_chain is not None  # an addition keeps the chain
    stale = Group(group_id=GROUP_ID, name="Team", members=dict(MEMBERS), revision=2)
    header, shared = sent(group, chain, encode_group_membership(
        stale, sender_phone="+33612345678"))
    book.opened(ALICE, GROUP_ID, book.open_shared(ALICE, header, shared))
    assert "+33611111111" in bobs.members  # same revision: not applied
    bobs.chains[("carol", 1)] = []
    without_carol = Group(group_id=GROUP_ID, name="Team", members=dict(MEMBERS), revision=3)
    header, shared = sent(group, chain, encode_group_membership(
        without_carol, sender_phone="+33612345678"))
    book.opened(ALICE, GROUP_ID, book.open_shared(ALICE, header, shared))
    assert bobs.members == MEMBERS and bobs.own_chain is None and bobs.distributed == set()
    assert ("carol", 1) not in bobs.chains


def test_a_device_leaving_rekeys_and_its_chains_are_forgotten() -> None:
    group, _ = alices_group()
    group.distributed = {BOB, ("bob", 2)}
    group.chains[("bob", 2)] = []
    assert not group.follow_devices({BOB, ("bob", 2), ("bob", 3)})
    assert group.follow_devices({BOB})
    assert group.own_chain is None and ("bob", 2) not in group.chains


def test_a_re_sent_key_does_not_move_a_chain_back_and_two_are_kept() -> None:
    group, chain = alices_group()
    book = bobs_book(key_from(group, chain))
    header, shared = sent(group, chain, encode_group_text(
        sender_phone="+33612345678", text="x", sent_at="t"))
    book.open_shared(ALICE, header, shared)
    book.accept_key(ALICE, GroupKey(group_id=GROUP_ID, name="Team", members=MEMBERS,
                                    revision=1, distribution=SendingChain(
                                        group_id=GROUP_ID, chain_id=chain.chain_id,
                                        iteration=0, chain_key=bytes(32),
                                        signing_key=chain.signing_key).distribution()),
                    own_user_id="bob")
    with pytest.raises(DuplicateMessageError):  # still at position 1, not back at 0
        book.open_shared(ALICE, header, shared)
    for seed in (b"2", b"3"):
        new = SendingChain.create(GROUP_ID, SeededRandom(seed))
        book.accept_key(ALICE, key_from(group, new), own_user_id="bob")
    assert len(book.groups[GROUP_ID].chains[ALICE]) == MAX_CHAINS_PER_DEVICE


def test_state_round_trips_and_names_stay_unique() -> None:
    group, chain = alices_group()
    book = bobs_book(key_from(group, chain))
    other = Group(group_id=bytes(32), name="Team", members=dict(MEMBERS), revision=1)
    book.accept_key(ALICE, key_from(other, other.sending_chain(SeededRandom(b"o"))),
                    own_user_id="bob")
    assert sorted(group.name for group in book.groups.values()) == ["Team", "Team (2)"]
    again = GroupBook.from_state(msgpack.unpackb(msgpack.packb(book.to_state()), raw=False))
    header, shared = sent(group, chain, encode_group_text(
        sender_phone="+33612345678", text="after reload", sent_at="t"))
    shown = again.opened(ALICE, GROUP_ID, again.open_shared(ALICE, header, shared))
    assert shown is not None and shown[1].text == "after reload"
    assert "key" not in repr(again.groups[GROUP_ID])


@pytest.mark.parametrize("change", [
    {"group": b"short"}, {"members": []},
    {"members": [["+1", "u"]] * (MAX_GROUP_MEMBERS + 1)}, {"members": [["+1", 5]]},
    {"name": "n" * 65}, {"revision": -1}, {"key": b"\x01" * 10}, {"v": 2}])
def test_a_malformed_group_key_is_refused(change: dict[str, object]) -> None:
    group, chain = alices_group()
    value = msgpack.unpackb(encode_group_key(group, chain.distribution()), raw=False)
    value.update(change)
    with pytest.raises(ContentError):
        decode_content(msgpack.packb(value))


def test_malformed_headers_and_contents_are_refused() -> None:
    good = {"v": 1, "kind": "group_header", "group": GROUP_ID, "chain": 1, "iteration": 0,
            "digest": hashlib.sha256(b"").digest()}
    assert isinstance(decode_group_pairwise(good), GroupHeader)
    with pytest.raises(GroupContentError):
        decode_group_pairwise({**good, "digest": b"short"})
    with pytest.raises(GroupContentError):
        decode_group_content(msgpack.packb({"v": 1, "kind": "poll"}))
    with pytest.raises(GroupContentError):
        decode_group_content(b"\xc1")
    with pytest.raises(ValueError, match="longer"):
        encode_group_text(sender_phone="+1", text="x" * (61 * 1024), sent_at="t")
