"""crypto.safety_number: the published vectors, both sides agree, any key or id change shows.

The vectors (tests/vectors/safety_number_v1.json) come from an independent script written from
docs/CRYPTO.md alone (tests/vectors/safety_number_reference.py, standard library only), which
also checks its iteration structure against libsignal's published fingerprint vector.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.safety_number import SAFETY_NUMBER_DIGITS, format_safety_number, safety_number

VECTORS_DIRECTORY = Path(__file__).parent / "vectors"
VECTORS = VECTORS_DIRECTORY / "safety_number_v1.json"
REFERENCE = VECTORS_DIRECTORY / "safety_number_reference.py"

ALICE_KEY = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
BOB_KEY = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")


def load_vectors() -> list[dict[str, str]]:
    document = json.loads(VECTORS.read_text())
    assert document["iterations"] == 5200
    vectors: list[dict[str, str]] = document["vectors"]
    assert len(vectors) >= 4
    return vectors


@pytest.mark.parametrize("vector", load_vectors(), ids=lambda vector: vector["local_user_id"])
def test_the_implementation_gives_the_published_digits_on_both_sides(
        vector: dict[str, str]) -> None:
    local_key = bytes.fromhex(vector["local_account_key"])
    remote_key = bytes.fromhex(vector["remote_account_key"])
    mine = safety_number(vector["local_user_id"], local_key, vector["remote_user_id"], remote_key)
    theirs = safety_number(vector["remote_user_id"], remote_key, vector["local_user_id"],
                           local_key)
    assert mine == theirs == vector["safety_number"]
    assert sorted([vector["local_digits"], vector["remote_digits"]]) == [mine[:30], mine[30:]]


def test_the_reference_script_reproduces_the_published_file_exactly(tmp_path: Path) -> None:
    """The vectors cannot drift: whoever changes one side must change the other on purpose."""
    output = tmp_path / "vectors.json"
    subprocess.run([sys.executable, str(REFERENCE), str(output)], check=True, timeout=120,
                   cwd=tmp_path)
    assert output.read_bytes() == VECTORS.read_bytes()


def test_the_reference_script_imports_nothing_of_the_project() -> None:
    source = REFERENCE.read_text()
    imported = {line.split()[1] for line in source.splitlines()
                if line.startswith(("import ", "from "))}
    assert imported == {"hashlib", "json", "os", "sys"}


def test_a_number_is_sixty_digits_shown_in_twelve_blocks() -> None:
    number = safety_number("alice", ALICE_KEY, "bob", BOB_KEY)
    assert len(number) == SAFETY_NUMBER_DIGITS and number.isdigit()
    blocks = format_safety_number(number).split(" ")
    assert len(blocks) == 12 and all(len(block) == 5 for block in blocks)
    assert "".join(blocks) == number


keys = st.binary(min_size=32, max_size=32)
user_ids = st.text(alphabet="0123456789abcdef", min_size=1, max_size=64)


@settings(max_examples=15, deadline=None)
@given(local_id=user_ids, local_key=keys, remote_id=user_ids, remote_key=keys)
def test_both_users_always_compute_the_same_sixty_digits(
        local_id: str, local_key: bytes, remote_id: str, remote_key: bytes) -> None:
    mine = safety_number(local_id, local_key, remote_id, remote_key)
    assert mine == safety_number(remote_id, remote_key, local_id, local_key)
    assert len(mine) == SAFETY_NUMBER_DIGITS and mine.isdigit()


@settings(max_examples=15, deadline=None)
@given(byte_index=st.integers(0, 31), bit=st.integers(0, 7), remote=st.booleans())
def test_any_change_of_either_account_key_changes_the_number(
        byte_index: int, bit: int, remote: bool) -> None:
    base = safety_number("alice", ALICE_KEY, "bob", BOB_KEY)
    changed = bytearray(BOB_KEY if remote else ALICE_KEY)
    changed[byte_index] ^= 1 << bit
    if remote:
        assert safety_number("alice", ALICE_KEY, "bob", bytes(changed)) != base
    else:
        assert safety_number("alice", bytes(changed), "bob", BOB_KEY) != base


def test_another_user_id_changes_the_number() -> None:
    base = safety_number("alice", ALICE_KEY, "bob", BOB_KEY)
    assert safety_number("alice", ALICE_KEY, "bobby", BOB_KEY) != base
    assert safety_number("alicf", ALICE_KEY, "bob", BOB_KEY) != base
    # The key and the user id are not interchangeable halves of one string.
    assert safety_number("bob", ALICE_KEY, "alice", BOB_KEY) != base


def test_keys_and_user_ids_out_of_their_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        safety_number("alice", ALICE_KEY[:31], "bob", BOB_KEY)
    with pytest.raises(ValueError, match="32 bytes"):
        safety_number("alice", ALICE_KEY, "bob", BOB_KEY + b"\x05")
    with pytest.raises(ValueError, match="user id"):
        safety_number("", ALICE_KEY, "bob", BOB_KEY)
    with pytest.raises(ValueError, match="user id"):
        safety_number("alice", ALICE_KEY, "b" * 65, BOB_KEY)
