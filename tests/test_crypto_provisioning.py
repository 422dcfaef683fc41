"""crypto.provisioning and crypto.link_code: linking a device end to end through a relay.

The relay carries the three messages and may do anything with them; the link code travels
beside it (a screen). Every test below is one thing a relay, a shoulder-surfer's typo or a
broken approving device can do, and what the two devices must do about it.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from crypto import provisioning
from crypto.device_list import sign_device_list
from crypto.primitives import Ed25519KeyPair, SeededRandom, ed25519_generate
from crypto.provisioning import (
    MAX_FINAL_SIZE,
    OFFER_SIZE,
    REPLY_SIZE,
    Approval,
    LinkCode,
    LinkCodeError,
    LinkSession,
    ProvisionedAccount,
    ProvisioningError,
    ProvisioningKeys,
    decode_link_code,
    encode_link_code,
    open_offer,
    start_approval,
)

CHANNEL = bytes.fromhex("00112233445566778899aabbccddeeff")
OTHER_CHANNEL = bytes.fromhex("ffeeddccbbaa99887766554433221100")
USER_ID = "0123456789abcdef0123456789abcdef"
PHONE = "+33612345678"
# An X25519 public key (RFC 7748 section 6.1, Alice's) and the two smallest low-order points.
RFC7748_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
LOW_ORDER_POINTS = [bytes(32), b"\x01" + bytes(31)]
BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


@dataclass
class Devices:
    """One account with one device, and a new device that wants to join it."""

    random: SeededRandom
    account: Ed25519KeyPair
    old_device: Ed25519KeyPair
    new_device: Ed25519KeyPair
    provisioning_keys: ProvisioningKeys

    @property
    def code(self) -> LinkCode:
        return decode_link_code(encode_link_code(CHANNEL, self.provisioning_keys.public_key))

    def provisioned(self, devices: list[bytes] | None = None,
                    account: Ed25519KeyPair | None = None) -> ProvisionedAccount:
        listed = [self.old_device.public_key, self.new_device.public_key] if devices is None \
            else devices
        signer = account or self.account
        return ProvisionedAccount(account=signer, user_id=USER_ID, device_id=2, phone=PHONE,
                                  device_list=sign_device_list(signer, version=2, devices=listed))


def make_devices(seed: bytes = b"provisioning test") -> Devices:
    random = SeededRandom(seed)
    return Devices(random=random, account=ed25519_generate(random),
                   old_device=ed25519_generate(random), new_device=ed25519_generate(random),
                   provisioning_keys=ProvisioningKeys.generate(random))


def exchange_until_reply(devices: Devices) -> tuple[Approval, LinkSession, bytes, bytes]:
    """Offer and reply: return both sides, the offer and the reply."""
    approval, offer = start_approval(devices.code, devices.random)
    session = open_offer(devices.provisioning_keys, CHANNEL, offer)
    reply = session.reply(devices.new_device.public_key)
    return approval, session, offer, reply


# --- The exchange ----------------------------------------------------------------------------


def test_a_full_exchange_gives_the_new_device_the_account_and_its_place() -> None:
    devices = make_devices()
    approval, offer = start_approval(devices.code, devices.random)
    assert len(offer) == OFFER_SIZE
    session = open_offer(devices.provisioning_keys, CHANNEL, offer)
    reply = session.reply(devices.new_device.public_key)
    assert len(reply) == REPLY_SIZE
    assert approval.open_reply(reply) == devices.new_device.public_key
    sent = devices.provisioned()
    final = approval.final(sent)
    assert len(final) <= MAX_FINAL_SIZE
    received = session.open_final(final)
    assert received == sent
    assert received.account.private_key == devices.account.private_key
    assert received.device_list.encoded == sent.device_list.encoded
    assert devices.new_device.public_key in received.device_list.devices


def test_the_largest_account_fits_the_final_bound() -> None:
    devices = make_devices()
    approval, session, _, reply = exchange_until_reply(devices)
    approval.open_reply(reply)
    others = [ed25519_generate(devices.random).public_key for _ in range(15)]
    largest = ProvisionedAccount(
        account=devices.account, user_id="u" * 64, device_id=2**31 - 1, phone="+" + "9" * 15,
        device_list=sign_device_list(devices.account, version=2**63 - 1,
                                     devices=[*others, devices.new_device.public_key]))
    final = approval.final(largest)
    assert len(final) == MAX_FINAL_SIZE
    assert session.open_final(final) == largest


def test_resending_a_message_gives_the_same_bytes_and_another_one_is_refused() -> None:
    """Each key seals one plaintext under a zero nonce: a second plaintext would reuse it."""
    devices = make_devices()
    approval, session, _, reply = exchange_until_reply(devices)
    assert session.reply(devices.new_device.public_key) == reply
    with pytest.raises(ValueError, match="another identity key"):
        session.reply(devices.old_device.public_key)
    approval.open_reply(reply)
    final = approval.final(devices.provisioned())
    assert approval.final(devices.provisioned()) == final
    with pytest.raises(ValueError, match="another account"):
        approval.final(devices.provisioned(devices=[devices.new_device.public_key]))


def test_each_side_refuses_to_skip_a_step() -> None:
    devices = make_devices()
    approval, offer = start_approval(devices.code, devices.random)
    with pytest.raises(ValueError, match="reply"):
        approval.final(devices.provisioned())
    session = open_offer(devices.provisioning_keys, CHANNEL, offer)
    with pytest.raises(ValueError, match="reply"):
        session.open_final(b"\x00" * 100)


def test_the_approving_device_only_sends_a_list_that_names_the_new_device() -> None:
    devices = make_devices()
    approval, _, _, reply = exchange_until_reply(devices)
    approval.open_reply(reply)
    with pytest.raises(ValueError, match="new device's identity key"):
        approval.final(devices.provisioned(devices=[devices.old_device.public_key]))


def test_the_new_device_refuses_a_final_whose_list_does_not_name_it() -> None:
    """An approving device that skipped its own check (built here from the module's parts)."""
    devices = make_devices()
    approval, session, _, reply = exchange_until_reply(devices)
    approval.open_reply(reply)
    without_it = devices.provisioned(devices=[devices.old_device.public_key])
    final = forge_final(approval, provisioning._encode_final(without_it))
    with pytest.raises(ProvisioningError, match="does not list this device"):
        session.open_final(final)


def test_the_new_device_refuses_a_list_signed_by_another_key_than_the_account_it_gets() -> None:
    devices = make_devices()
    approval, session, _, reply = exchange_until_reply(devices)
    approval.open_reply(reply)
    other_account = ed25519_generate(devices.random)
    sent = devices.provisioned()
    with pytest.raises(ValueError, match="another account key"):
        ProvisionedAccount(account=other_account, user_id=USER_ID, device_id=2, phone=PHONE,
                           device_list=sent.device_list)
    plaintext = provisioning._encode_final(sent)
    swapped_seed = other_account.private_key + plaintext[32:]
    with pytest.raises(ProvisioningError, match="signed by another account key"):
        session.open_final(forge_final(approval, swapped_seed))


def forge_final(approval: Approval, plaintext: bytes) -> bytes:
    """Seal any plaintext as the final message of ``approval``'s exchange."""
    keys = approval._keys
    return provisioning._seal(keys.final_key, provisioning._FINAL_LABEL, keys, plaintext)


@pytest.mark.parametrize(("change", "reason"), [
    (lambda plaintext: plaintext + b"\x00", "trailing bytes"),
    (lambda plaintext: plaintext[:-1], "truncated"),
    (lambda plaintext: plaintext[:40], "truncated"),
    (lambda plaintext: b"", "truncated"),
    (lambda plaintext: plaintext.replace(USER_ID.encode(), b"\xff" * len(USER_ID)), "ASCII"),
    (lambda plaintext: plaintext.replace(USER_ID.encode(), b"\x07" * len(USER_ID)), "user id"),
    (lambda plaintext: plaintext.replace(PHONE.encode(), b"+0" + PHONE.encode()[2:]), "E.164"),
    (lambda plaintext: plaintext.replace(b"\x00\x00\x00\x02", b"\x00\x00\x00\x00", 1),
     "device id"),
    (lambda plaintext: plaintext.replace(b"\x00\x00\x00\x02", b"\x80\x00\x00\x00", 1),
     "device id"),
    (lambda plaintext: plaintext[:-1] + bytes([plaintext[-1] ^ 1]), "signature"),
])
def test_a_sealed_but_malformed_account_is_refused(change: object, reason: str) -> None:
    devices = make_devices()
    approval, session, _, reply = exchange_until_reply(devices)
    approval.open_reply(reply)
    plaintext = provisioning._encode_final(devices.provisioned())
    assert callable(change)
    with pytest.raises(ProvisioningError, match=reason):
        session.open_final(forge_final(approval, change(plaintext)))


def test_every_truncation_of_the_final_plaintext_is_refused() -> None:
    devices = make_devices()
    approval, session, _, reply = exchange_until_reply(devices)
    approval.open_reply(reply)
    plaintext = provisioning._encode_final(devices.provisioned())
    for size in range(len(plaintext)):
        with pytest.raises(ProvisioningError):
            session.open_final(forge_final(approval, plaintext[:size]))


# --- What a relay can try --------------------------------------------------------------------


def relay_session(channel_id: bytes, random: SeededRandom) -> tuple[ProvisioningKeys, LinkSession]:
    """A relay playing new device with its own provisioning key: a session it fully controls."""
    relay_keys = ProvisioningKeys.generate(random)
    _, offer = start_approval(LinkCode(channel_id=channel_id, public_key=relay_keys.public_key),
                              random)
    return relay_keys, open_offer(relay_keys, channel_id, offer)


def test_a_relay_answering_with_its_own_provisioning_key_is_refused_before_the_account_leaves(
        ) -> None:
    devices = make_devices()
    approval, offer = start_approval(devices.code, devices.random)
    relay_keys, relay = relay_session(CHANNEL, devices.random)
    # The relay cannot open the intercepted offer with its key...
    with pytest.raises(ProvisioningError, match="not made from this device's link code"):
        open_offer(relay_keys, CHANNEL, offer)
    # ...and a reply made with its own key, carrying its own identity, does not open.
    relay_identity = ed25519_generate(devices.random).public_key
    with pytest.raises(ProvisioningError, match="not the one that showed the code"):
        approval.open_reply(relay.reply(relay_identity))
    with pytest.raises(ValueError, match="reply"):
        approval.final(devices.provisioned())


def test_a_reply_computed_from_the_intercepted_offer_and_the_relays_key_is_refused() -> None:
    """The relay keeps the approving device's ephemeral key but uses its own provisioning key:
    the keys it derives are not the approving device's."""
    devices = make_devices()
    approval, offer = start_approval(devices.code, devices.random)
    relay_keys = ProvisioningKeys.generate(devices.random)
    ephemeral = offer[:32]
    shared = provisioning.x25519_dh(relay_keys.keypair.private_key, ephemeral)
    for provisioning_key in (relay_keys.public_key, devices.provisioning_keys.public_key):
        keys = provisioning._derive(shared, CHANNEL, provisioning_key, ephemeral)
        forged = provisioning._seal(keys.reply_key, provisioning._REPLY_LABEL, keys,
                                    ed25519_generate(devices.random).public_key)
        with pytest.raises(ProvisioningError, match="not the one that showed the code"):
            approval.open_reply(forged)


def test_a_reply_from_another_exchange_with_the_same_code_is_refused() -> None:
    """Two approvals of one code: the relay swaps their replies."""
    devices = make_devices()
    first, _ = start_approval(devices.code, devices.random)
    second, other_offer = start_approval(devices.code, devices.random)
    session = open_offer(devices.provisioning_keys, CHANNEL, other_offer)
    with pytest.raises(ProvisioningError, match="not the one that showed the code"):
        first.open_reply(session.reply(devices.new_device.public_key))
    assert second.open_reply(session.reply(devices.new_device.public_key)) == \
        devices.new_device.public_key


def test_the_new_device_refuses_offers_for_another_key_or_channel() -> None:
    devices = make_devices()
    _, relay_offer = start_approval(
        LinkCode(channel_id=CHANNEL, public_key=ProvisioningKeys.generate(devices.random)
                 .public_key), devices.random)
    with pytest.raises(ProvisioningError, match="not made from this device's link code"):
        open_offer(devices.provisioning_keys, CHANNEL, relay_offer)
    _, offer = start_approval(devices.code, devices.random)
    with pytest.raises(ProvisioningError, match="not made from this device's link code"):
        open_offer(devices.provisioning_keys, OTHER_CHANNEL, offer)


def test_a_final_from_another_exchange_is_refused() -> None:
    devices = make_devices()
    old_approval, _, _, old_reply = exchange_until_reply(devices)
    old_approval.open_reply(old_reply)
    replayed = old_approval.final(devices.provisioned())
    _, session, _, _ = exchange_until_reply(devices)
    with pytest.raises(ProvisioningError, match="not made in this exchange"):
        session.open_final(replayed)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_low_order_keys_are_refused_on_both_sides(point: bytes) -> None:
    devices = make_devices()
    with pytest.raises(ProvisioningError, match="code's key is not a usable X25519 key"):
        start_approval(LinkCode(channel_id=CHANNEL, public_key=point), devices.random)
    _, offer = start_approval(devices.code, devices.random)
    with pytest.raises(ProvisioningError, match="offer's key is not a usable X25519 key"):
        open_offer(devices.provisioning_keys, CHANNEL, point + offer[32:])


def flip(data: bytes, index: int, bit: int) -> bytes:
    changed = bytearray(data)
    changed[index % len(data)] ^= 1 << bit
    return bytes(changed)


@settings(max_examples=40, deadline=None)
@given(index=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_a_flipped_bit_in_any_message_is_refused(index: int, bit: int) -> None:
    devices = make_devices()
    approval, offer = start_approval(devices.code, devices.random)
    with pytest.raises(ProvisioningError):
        open_offer(devices.provisioning_keys, CHANNEL, flip(offer, index, bit))
    session = open_offer(devices.provisioning_keys, CHANNEL, offer)
    reply = session.reply(devices.new_device.public_key)
    with pytest.raises(ProvisioningError):
        approval.open_reply(flip(reply, index, bit))
    approval.open_reply(reply)
    final = approval.final(devices.provisioned())
    with pytest.raises(ProvisioningError):
        session.open_final(flip(final, index, bit))
    assert session.open_final(final).device_id == 2  # The intact one still opens.


def test_messages_of_the_wrong_size_are_refused() -> None:
    devices = make_devices()
    approval, session, offer, reply = exchange_until_reply(devices)
    for wrong in (offer[:-1], offer + b"\x00", b""):
        with pytest.raises(ProvisioningError, match=f"{OFFER_SIZE} bytes"):
            open_offer(devices.provisioning_keys, CHANNEL, wrong)
    for wrong in (reply[:-1], reply + b"\x00", b""):
        with pytest.raises(ProvisioningError, match=f"{REPLY_SIZE} bytes"):
            approval.open_reply(wrong)
    approval.open_reply(reply)
    final = approval.final(devices.provisioned())
    for wrong in (final[:-1], final + b"\x00", b"", bytes(16)):
        with pytest.raises(ProvisioningError):
            session.open_final(wrong)
    with pytest.raises(ProvisioningError, match=f"at most {MAX_FINAL_SIZE}"):
        session.open_final(bytes(MAX_FINAL_SIZE + 1))


def test_an_offer_of_another_version_is_refused_by_name() -> None:
    devices = make_devices()
    approval, offer = start_approval(devices.code, devices.random)
    keys = approval._keys
    future = offer[:32] + provisioning._seal(keys.offer_key, provisioning._OFFER_LABEL, keys,
                                             b"offer\x02")
    with pytest.raises(ProvisioningError, match="version 2 is not supported"):
        open_offer(devices.provisioning_keys, CHANNEL, future)
    other = offer[:32] + provisioning._seal(keys.offer_key, provisioning._OFFER_LABEL, keys,
                                            b"hello\x01")
    with pytest.raises(ProvisioningError, match="not a link offer"):
        open_offer(devices.provisioning_keys, CHANNEL, other)


def test_a_reply_carrying_an_invalid_identity_key_is_refused() -> None:
    devices = make_devices()
    approval, _ = start_approval(devices.code, devices.random)
    keys = approval._keys
    not_a_point = bytes.fromhex("02" + "00" * 31)  # y = 2 has no x on edwards25519.
    forged = provisioning._seal(keys.reply_key, provisioning._REPLY_LABEL, keys, not_a_point)
    with pytest.raises(ProvisioningError, match="not a valid Ed25519 key"):
        approval.open_reply(forged)


def test_our_own_misuse_is_a_value_error() -> None:
    devices = make_devices()
    _, offer = start_approval(devices.code, devices.random)
    with pytest.raises(ValueError, match="channel id"):
        open_offer(devices.provisioning_keys, CHANNEL[:15], offer)
    session = open_offer(devices.provisioning_keys, CHANNEL, offer)
    with pytest.raises(ValueError, match="identity key"):
        session.reply(b"\x00" * 31)
    for field, value in (("user_id", ""), ("user_id", "é"), ("device_id", 0), ("phone", "0612")):
        arguments: dict[str, object] = {"account": devices.account, "user_id": USER_ID,
                                        "device_id": 2, "phone": PHONE,
                                        "device_list": devices.provisioned().device_list}
        arguments[field] = value
        with pytest.raises(ValueError):
            ProvisionedAccount(**arguments)  # type: ignore[arg-type]


def test_no_secret_appears_in_any_repr() -> None:
    devices = make_devices()
    approval, session, _, reply = exchange_until_reply(devices)
    approval.open_reply(reply)
    received = session.open_final(approval.final(devices.provisioned()))
    secrets = [devices.provisioning_keys.keypair.private_key, devices.account.private_key,
               approval._keys.final_key, approval._keys.reply_key, approval._keys.offer_key]
    for shown in (repr(devices.provisioning_keys), repr(approval), repr(session),
                  repr(received), str(received)):
        for secret in secrets:
            assert secret.hex() not in shown and repr(secret) not in shown


# --- Link codes ------------------------------------------------------------------------------


def test_a_link_code_is_the_documented_bytes_in_base32() -> None:
    text = encode_link_code(CHANNEL, RFC7748_PUBLIC)
    assert text.startswith("CPL1-") and len(text) == 5 + 85
    payload = base64.b32decode(text[5:] + "===")
    body = b"\x01" + CHANNEL + RFC7748_PUBLIC
    assert payload == body + hashlib.sha256(body).digest()[:4]
    assert decode_link_code(text) == LinkCode(channel_id=CHANNEL, public_key=RFC7748_PUBLIC)


@given(channel_id=st.binary(min_size=16, max_size=16), key=st.binary(min_size=32, max_size=32))
def test_any_link_code_reads_back(channel_id: bytes, key: bytes) -> None:
    code = decode_link_code(encode_link_code(channel_id, key))
    assert (code.channel_id, code.public_key) == (channel_id, key)


def test_case_spaces_dashes_and_line_breaks_do_not_matter() -> None:
    text = encode_link_code(CHANNEL, RFC7748_PUBLIC)
    body = text[5:]
    groups = [body[index:index + 5] for index in range(0, len(body), 5)]
    expected = LinkCode(channel_id=CHANNEL, public_key=RFC7748_PUBLIC)
    for variant in (text.lower(), f"  {text}\n", "CPL1-" + "-".join(groups),
                    "cpl1 " + " ".join(groups).lower(), "CPL1-" + "\n".join(groups),
                    "CPL1" + body, text.swapcase()):
        assert decode_link_code(variant) == expected


CODE = encode_link_code(CHANNEL, RFC7748_PUBLIC)


@settings(max_examples=300)
@given(position=st.integers(5, len(CODE) - 1),
       replacement=st.one_of(st.sampled_from(BASE32 + BASE32.lower() + "- \n"), st.characters()))
def test_any_single_character_change_is_refused(position: int, replacement: str) -> None:
    original = CODE[position]
    assume(not (replacement.isascii() and replacement.upper() == original))
    with pytest.raises(LinkCodeError):
        decode_link_code(CODE[:position] + replacement + CODE[position + 1:])


@settings(max_examples=100)
@given(position=st.integers(5, len(CODE) - 2), inserted=st.sampled_from(BASE32))
def test_a_missing_extra_or_swapped_character_is_refused(position: int, inserted: str) -> None:
    with pytest.raises(LinkCodeError, match="missing or extra"):
        decode_link_code(CODE[:position] + CODE[position + 1:])
    with pytest.raises(LinkCodeError, match="missing or extra"):
        decode_link_code(CODE[:position] + inserted + CODE[position:])
    swapped = CODE[:position] + CODE[position + 1] + CODE[position] + CODE[position + 2:]
    assume(swapped != CODE)
    with pytest.raises(LinkCodeError, match="mistyped"):
        decode_link_code(swapped)


def test_a_substitution_inside_the_alphabet_is_reported_as_a_typo() -> None:
    for position in range(5, len(CODE)):
        replacement = "A" if CODE[position] != "A" else "B"
        with pytest.raises(LinkCodeError, match="mistyped"):
            decode_link_code(CODE[:position] + replacement + CODE[position + 1:])


def test_the_unused_last_bit_must_be_zero() -> None:
    """85 characters hold 425 bits for 424: a last character with the spare bit set decodes
    to the same bytes, and is still refused, so the text has one spelling."""
    last = BASE32.index(CODE[-1])
    assert last % 2 == 0
    with pytest.raises(LinkCodeError, match="mistyped"):
        decode_link_code(CODE[:-1] + BASE32[last + 1])


def test_characters_outside_base32_are_named() -> None:
    with pytest.raises(LinkCodeError, match=r"'0'.*letter O"):
        decode_link_code(CODE[:10] + "0" + CODE[11:])
    with pytest.raises(LinkCodeError, match=r"'1'.*letter I or L"):
        decode_link_code(CODE[:10] + "1" + CODE[11:])
    with pytest.raises(LinkCodeError, match=r"'\*'"):
        decode_link_code(CODE[:10] + "*" + CODE[11:])
    with pytest.raises(LinkCodeError, match="'é'"):
        decode_link_code(CODE[:10] + "é" + CODE[11:])


@pytest.mark.parametrize(("text", "reason"), [
    ("", "starts with CPL1-"),
    ("hello", "starts with CPL1-"),
    ("CPX1-" + CODE[5:], "starts with CPL1-"),
    ("CPL2-" + CODE[5:], "version 2 link code"),
    ("CPL1-", "85 characters"),
])
def test_wrong_prefixes_and_lengths_are_named(text: str, reason: str) -> None:
    with pytest.raises(LinkCodeError, match=reason):
        decode_link_code(text)


def test_a_well_formed_code_of_another_version_is_named() -> None:
    body = b"\x02" + CHANNEL + RFC7748_PUBLIC
    text = "CPL1-" + base64.b32encode(body + hashlib.sha256(body).digest()[:4]).decode()
    with pytest.raises(LinkCodeError, match="version 2 is not supported"):
        decode_link_code(text.rstrip("="))


def test_a_link_code_is_made_only_of_the_right_sizes() -> None:
    with pytest.raises(LinkCodeError, match="16 bytes"):
        encode_link_code(CHANNEL[:15], RFC7748_PUBLIC)
    with pytest.raises(LinkCodeError, match="32 bytes"):
        LinkCode(channel_id=CHANNEL, public_key=RFC7748_PUBLIC + b"\x00")
    assert issubclass(LinkCodeError, ValueError)
