"""crypto.safety_number: both sides agree; any key or device change shows."""

from __future__ import annotations

import pytest

from crypto.safety_number import format_safety_number, safety_number

ALICE_KEY = bytes(range(32))
BOB_KEY = bytes(range(32, 64))
BOB_SECOND_KEY = bytes(range(64, 96))

# Pinned from this implementation (docs/CRYPTO.md): an app must print the same digits.
PINNED = "152597132313558509611953701603312853211110151013083951080530"


def test_both_sides_compute_the_same_sixty_digits() -> None:
    mine = safety_number("alice", [ALICE_KEY], "bob", [BOB_KEY])
    theirs = safety_number("bob", [BOB_KEY], "alice", [ALICE_KEY])
    assert mine == theirs == PINNED
    assert len(mine) == 60 and mine.isdigit()
    assert format_safety_number(mine).count(" ") == 11


def test_a_changed_key_a_new_device_or_another_user_changes_the_number() -> None:
    base = safety_number("alice", [ALICE_KEY], "bob", [BOB_KEY])
    assert safety_number("alice", [ALICE_KEY], "bob", [BOB_SECOND_KEY]) != base
    assert safety_number("alice", [ALICE_KEY], "bob", [BOB_KEY, BOB_SECOND_KEY]) != base
    assert safety_number("alice", [ALICE_KEY], "bobby", [BOB_KEY]) != base
    # Device order does not matter.
    assert safety_number("alice", [ALICE_KEY], "bob", [BOB_SECOND_KEY, BOB_KEY]) == \
        safety_number("alice", [ALICE_KEY], "bob", [BOB_KEY, BOB_SECOND_KEY])


def test_bad_key_sets_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        safety_number("alice", [ALICE_KEY[:31]], "bob", [BOB_KEY])
    with pytest.raises(ValueError, match="identity keys"):
        safety_number("alice", [], "bob", [BOB_KEY])
