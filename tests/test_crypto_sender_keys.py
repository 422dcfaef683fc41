"""Sender keys (crypto/sender_keys.py): one chain per (group, member device)."""

from __future__ import annotations

import pytest

from crypto.errors import DuplicateMessageError, MalformedMessageError, TooManySkippedMessagesError
from crypto.primitives import DecryptionError, SeededRandom, SignatureError
from crypto.sender_keys import (
    MAX_FORWARD_JUMP,
    MAX_SKIPPED_SENDER_KEYS,
    ReceivingChain,
    SenderKeyDistribution,
    SenderKeyMessage,
    SendingChain,
)

GROUP = bytes(range(32))
OTHER_GROUP = bytes(32)


def chains(seed: bytes = b"alice", group: bytes = GROUP) -> tuple[SendingChain, ReceivingChain]:
    sending = SendingChain.create(group, SeededRandom(seed))
    distribution = SenderKeyDistribution.decode(sending.distribution().encode())
    return sending, ReceivingChain.from_distribution(distribution)


def reparse(message: SenderKeyMessage) -> SenderKeyMessage:
    """As a receiver gets it: the body from the shared payload, the header from its record."""
    return SenderKeyMessage.from_body(chain_id=message.chain_id, iteration=message.iteration,
                                      body=message.body())


def test_round_trip_and_the_chain_moves_forward() -> None:
    sending, receiving = chains()
    for text in (b"first", b"", b"x" * 5000):
        receiving, plaintext = receiving.decrypt(reparse(sending.encrypt(text)))
        assert plaintext == text
    assert sending.iteration == receiving.iteration == 3


def test_padding_hides_the_exact_length() -> None:
    sending, _ = chains()
    assert len(sending.encrypt(b"a").body()) == len(sending.encrypt(b"abc" * 10).body())


def test_out_of_order_within_the_cap_then_each_once() -> None:
    sending, receiving = chains()
    messages = [sending.encrypt(f"m{index}".encode()) for index in range(6)]
    for index in (5, 0, 3, 1, 4, 2):
        receiving, plaintext = receiving.decrypt(reparse(messages[index]))
        assert plaintext == f"m{index}".encode()
    assert receiving.skipped == {}
    for message in messages:
        with pytest.raises(DuplicateMessageError):
            receiving.decrypt(reparse(message))


def test_a_replay_is_refused_and_a_failure_changes_nothing() -> None:
    sending, receiving = chains()
    message = sending.encrypt(b"once")
    after, _ = receiving.decrypt(message)
    with pytest.raises(DuplicateMessageError):
        after.decrypt(message)
    assert receiving.iteration == 0  # decrypt worked on a copy


@pytest.mark.parametrize("part", ["ciphertext", "signature", "iteration", "chain"])
def test_tampering_is_refused(part: str) -> None:
    sending, receiving = chains()
    message = sending.encrypt(b"hello group")
    sending.encrypt(b"second")
    if part == "ciphertext":
        flipped = bytes([message.ciphertext[0] ^ 1]) + message.ciphertext[1:]
        forged = SenderKeyMessage(chain_id=message.chain_id, iteration=message.iteration,
                                  ciphertext=flipped, signature=message.signature)
        error: type[Exception] = SignatureError
    elif part == "signature":
        forged = SenderKeyMessage(chain_id=message.chain_id, iteration=message.iteration,
                                  ciphertext=message.ciphertext, signature=bytes(64))
        error = SignatureError
    elif part == "iteration":  # the header in a record says another position
        forged = SenderKeyMessage(chain_id=message.chain_id, iteration=1,
                                  ciphertext=message.ciphertext, signature=message.signature)
        error = SignatureError
    else:
        forged = SenderKeyMessage(chain_id=message.chain_id ^ 1, iteration=message.iteration,
                                  ciphertext=message.ciphertext, signature=message.signature)
        error = MalformedMessageError
    with pytest.raises(error):
        receiving.decrypt(forged)
    assert receiving.decrypt(message)[1] == b"hello group"


def test_another_members_chain_key_cannot_forge_the_owners_messages() -> None:
    """Every member holds the chain key; only the owner holds the signing key."""
    sending, receiving = chains()
    forger = SendingChain(group_id=GROUP, chain_id=sending.chain_id, iteration=0,
                          chain_key=sending.chain_key,
                          signing_key=SendingChain.create(GROUP, SeededRandom(b"eve")).signing_key)
    with pytest.raises(SignatureError):
        receiving.decrypt(forger.encrypt(b"I am alice"))


def test_a_message_for_another_group_does_not_open() -> None:
    sending, _ = chains(group=OTHER_GROUP)
    same_keys = ReceivingChain.from_distribution(SenderKeyDistribution(
        group_id=GROUP, chain_id=sending.chain_id, iteration=0, chain_key=sending.chain_key,
        signing_public_key=sending.signing_key.public_key))
    with pytest.raises(SignatureError):  # the group id is in what the signature covers
        same_keys.decrypt(sending.encrypt(b"for the other group"))


def test_the_forward_jump_is_capped() -> None:
    sending, receiving = chains()
    far = SendingChain(group_id=GROUP, chain_id=sending.chain_id, iteration=0,
                       chain_key=sending.chain_key, signing_key=sending.signing_key)
    for _ in range(MAX_FORWARD_JUMP + 1):
        far.encrypt(b"")
    with pytest.raises(TooManySkippedMessagesError):
        receiving.decrypt(far.encrypt(b"too far"))
    far_ok = SendingChain(group_id=GROUP, chain_id=sending.chain_id, iteration=0,
                          chain_key=sending.chain_key, signing_key=sending.signing_key)
    for _ in range(MAX_FORWARD_JUMP):
        far_ok.encrypt(b"")
    receiving, plaintext = receiving.decrypt(far_ok.encrypt(b"just within"))
    assert plaintext == b"just within"
    assert len(receiving.skipped) == min(MAX_FORWARD_JUMP, MAX_SKIPPED_SENDER_KEYS)


def test_skipped_keys_beyond_the_cap_are_dropped_oldest_first() -> None:
    sending, receiving = chains()
    total = MAX_SKIPPED_SENDER_KEYS + 10
    messages = [sending.encrypt(str(index).encode()) for index in range(total + 2)]
    receiving, _ = receiving.decrypt(messages[total // 2])  # within the jump each time
    receiving, _ = receiving.decrypt(messages[total + 1])
    assert len(receiving.skipped) == MAX_SKIPPED_SENDER_KEYS
    with pytest.raises(DuplicateMessageError):
        receiving.decrypt(messages[0])  # the oldest, dropped
    assert receiving.decrypt(messages[total])[1] == str(total).encode()


def test_a_removed_members_old_chain_cannot_open_the_new_chain() -> None:
    """On removal the sender makes a new chain and hands it only to those who stay."""
    old, removed_member_view = chains(b"alice-1")
    removed_member_view, _ = removed_member_view.decrypt(old.encrypt(b"before"))
    new = SendingChain.create(GROUP, SeededRandom(b"alice-2"))
    remaining_view = ReceivingChain.from_distribution(new.distribution())
    after = new.encrypt(b"after the removal")
    with pytest.raises(MalformedMessageError):  # another chain id: no chain to open it
        removed_member_view.decrypt(after)
    same_id = SenderKeyMessage(chain_id=old.chain_id, iteration=after.iteration,
                               ciphertext=after.ciphertext, signature=after.signature)
    with pytest.raises(SignatureError):  # relabelled as the old chain: still not openable
        removed_member_view.decrypt(same_id)
    assert remaining_view.decrypt(after)[1] == b"after the removal"


def test_a_chain_handed_over_later_opens_nothing_earlier() -> None:
    """Forward secrecy of the chain: a member added later gets the chain at its current
    iteration, and keys only derive forward."""
    sending, _ = chains()
    earlier = [sending.encrypt(f"early {index}".encode()) for index in range(3)]
    late_member = ReceivingChain.from_distribution(sending.distribution())
    assert late_member.iteration == 3
    for message in earlier:
        with pytest.raises(DuplicateMessageError):
            late_member.decrypt(message)
    assert late_member.decrypt(sending.encrypt(b"now"))[1] == b"now"


def test_state_round_trips() -> None:
    sending, receiving = chains()
    messages = [sending.encrypt(bytes([index])) for index in range(3)]
    receiving, _ = receiving.decrypt(messages[2])
    sending = SendingChain.from_state(sending.to_state())
    receiving = ReceivingChain.from_state(receiving.to_state())
    assert receiving.decrypt(messages[0])[1] == b"\x00"
    assert receiving.decrypt(sending.encrypt(b"later"))[1] == b"later"
    assert "key" not in repr(sending) and "key" not in repr(receiving)


def test_malformed_inputs_are_refused() -> None:
    with pytest.raises(MalformedMessageError):
        SenderKeyMessage.from_body(chain_id=1, iteration=0, body=b"\x01" + bytes(20))
    sending, _ = chains()
    body = sending.encrypt(b"x").body()
    with pytest.raises(MalformedMessageError):
        SenderKeyMessage.from_body(chain_id=1, iteration=0, body=b"\x09" + body[1:])
    with pytest.raises(MalformedMessageError):
        SenderKeyDistribution.decode(sending.distribution().encode()[:-1])
    with pytest.raises(MalformedMessageError):
        SenderKeyDistribution.decode(b"\x02" + sending.distribution().encode()[1:])


def test_a_wrong_key_fails_authentication_not_silently() -> None:
    sending, receiving = chains()
    wrong = ReceivingChain(group_id=GROUP, chain_id=receiving.chain_id, iteration=0,
                           chain_key=bytes(32), signing_public_key=receiving.signing_public_key)
    with pytest.raises(DecryptionError):
        wrong.decrypt(sending.encrypt(b"secret"))
