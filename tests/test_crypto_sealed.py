"""Sealed envelopes and sender certificates: a round trip, then every way to get one wrong.

Alice seals a ratchet message for Bob's device with a certificate the relay signed; Bob opens
it with his identity key and the relay keys he pinned, learns from the certificate who sent
it, checks that against what he pinned for Alice, and decrypts the inner message as hers.
Each hostile variant is refused with its own typed reason and changes nothing.
"""

from __future__ import annotations

import msgpack
import pytest

from crypto.delivery_token import (
    DELIVERY_TOKEN_SIZE,
    delivery_token,
    delivery_token_hash,
    new_profile_key,
)
from crypto.device import DeviceAddress, DeviceCrypto
from crypto.prekeys import PrekeyBundle
from crypto.primitives import Ed25519KeyPair, SeededRandom, ed25519_generate
from crypto.sealed_sender import (
    MAX_SEALED_ENVELOPE_SIZE,
    OpenedEnvelope,
    SealedProblem,
    SealedSenderError,
    check_pinned_sender,
    open_envelope,
    seal,
)
from crypto.sender_certificate import (
    CertificateError,
    CertificateProblem,
    RelayCertificateKey,
    decode_sender_certificate,
    issue_sender_certificate,
    verify_sender_certificate,
)

NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY_MS = 86_400_000
ALICE = DeviceAddress("alice", 1)
BOB = DeviceAddress("bob", 1)

_random = SeededRandom(b"sealed sender tests")
ALICE_IDENTITY = ed25519_generate(_random)
ALICE_ACCOUNT = ed25519_generate(_random)
BOB_IDENTITY = ed25519_generate(_random)
BOB_PHONE_2_IDENTITY = ed25519_generate(_random)
MALLORY_IDENTITY = ed25519_generate(_random)
RELAY_KEY = ed25519_generate(_random)
OLD_RELAY_KEY = ed25519_generate(_random)
ROGUE_KEY = ed25519_generate(_random)
PINNED = (RelayCertificateKey(key_id=2, public_key=RELAY_KEY.public_key,
                              not_after_ms=NOW_MS + 365 * DAY_MS),)


def certificate(*, signer: Ed25519KeyPair = RELAY_KEY, key_id: int = 2,
                identity: Ed25519KeyPair = ALICE_IDENTITY,
                account_key: bytes = ALICE_ACCOUNT.public_key,
                expires_ms: int = NOW_MS + DAY_MS, user_id: str = ALICE.user_id) -> bytes:
    return issue_sender_certificate(signing_key=signer.private_key, key_id=key_id,
                                    user_id=user_id, device_id=ALICE.device_id,
                                    account_key=account_key,
                                    identity_key=identity.public_key, expires_ms=expires_ms)


def devices() -> tuple[DeviceCrypto, DeviceCrypto]:
    """Alice has a session with Bob's device; both trust each other's keys."""
    random = SeededRandom(b"devices")
    alice = DeviceCrypto.create(ALICE_IDENTITY, random, address=ALICE, now_ms=NOW_MS)
    bob = DeviceCrypto.create(BOB_IDENTITY, random, address=BOB, now_ms=NOW_MS)
    alice.trust_identity(BOB, BOB_IDENTITY.public_key)
    bob.trust_identity(ALICE, ALICE_IDENTITY.public_key)
    alice.start_session(BOB, PrekeyBundle(
        identity_key=bob.identity_key, signed_prekey=bob.signed_prekey(),
        kem_prekey=bob.kem_last_resort_prekey(), one_time_prekey=None))
    return alice, bob


def sealed_for_bob(message: bytes = b"inner ratchet message", *,
                   cert: bytes | None = None, sender: Ed25519KeyPair = ALICE_IDENTITY,
                   recipient: Ed25519KeyPair = BOB_IDENTITY) -> bytes:
    return seal(message=message, certificate=certificate() if cert is None else cert,
                sender_identity=sender, recipient_identity_key=recipient.public_key,
                random=SeededRandom(b"ephemeral"), content_hint=3)


def open_as_bob(data: bytes, *, pinned: tuple[RelayCertificateKey, ...] = PINNED,
                now_ms: int = NOW_MS,
                identity: Ed25519KeyPair = BOB_IDENTITY) -> OpenedEnvelope:
    return open_envelope(data, recipient_identity=identity, pinned_relay_keys=pinned,
                         now_ms=now_ms)


def test_a_sealed_ratchet_message_opens_as_its_sender_and_decrypts() -> None:
    alice, bob = devices()
    inner = alice.encrypt(b"hello Bob", [BOB])[BOB]
    envelope = sealed_for_bob(inner)
    opened = open_as_bob(envelope)
    sender = DeviceAddress(opened.certificate.user_id, opened.certificate.device_id)
    check_pinned_sender(opened.certificate, account_key=ALICE_ACCOUNT.public_key,
                        identity_key=ALICE_IDENTITY.public_key)
    assert sender == ALICE and opened.content_hint == 3
    assert bob.decrypt(sender, opened.message,
                       expected_identity_key=ALICE_IDENTITY.public_key).plaintext == b"hello Bob"
    # Nothing of the sender is in clear: neither its keys, its user id nor the certificate.
    for secret in (ALICE_IDENTITY.public_key, ALICE_ACCOUNT.public_key, b"alice", inner[:64]):
        assert secret not in envelope


def test_two_seals_of_one_message_share_no_bytes_beyond_the_version() -> None:
    first = seal(message=b"m", certificate=certificate(), sender_identity=ALICE_IDENTITY,
                 recipient_identity_key=BOB_IDENTITY.public_key, random=SeededRandom(b"1"))
    second = seal(message=b"m", certificate=certificate(), sender_identity=ALICE_IDENTITY,
                  recipient_identity_key=BOB_IDENTITY.public_key, random=SeededRandom(b"2"))
    assert first[0] == second[0] == 1
    assert first[1:33] != second[1:33] and first[41:] != second[41:]


def refused(data: bytes, **options: object) -> SealedProblem | CertificateProblem:
    with pytest.raises((SealedSenderError, CertificateError)) as caught:
        open_as_bob(data, **options)  # type: ignore[arg-type]
    error = caught.value
    assert isinstance(error, SealedSenderError | CertificateError)
    return error.problem


def test_a_forged_certificate_is_refused_for_its_signature() -> None:
    forged = certificate(signer=ROGUE_KEY)  # claims key id 2, signed by another key
    assert refused(sealed_for_bob(cert=forged)) is CertificateProblem.BAD_SIGNATURE


def test_a_certificate_with_a_changed_field_is_refused_for_its_signature() -> None:
    body, signature = msgpack.unpackb(certificate(), raw=False)
    fields = msgpack.unpackb(body, raw=False)
    fields["user_id"] = "mallory"
    changed = msgpack.packb([msgpack.packb(fields), signature])
    assert refused(sealed_for_bob(cert=changed)) is CertificateProblem.BAD_SIGNATURE


def test_an_expired_certificate_is_refused() -> None:
    expired = certificate(expires_ms=NOW_MS)
    assert refused(sealed_for_bob(cert=expired)) is CertificateProblem.EXPIRED
    assert open_as_bob(sealed_for_bob(cert=expired), now_ms=NOW_MS - 1)  # valid just before


def test_a_certificate_signed_by_an_unknown_key_is_refused() -> None:
    unknown = certificate(signer=ROGUE_KEY, key_id=9)
    assert refused(sealed_for_bob(cert=unknown)) is CertificateProblem.UNKNOWN_KEY


def test_a_malformed_certificate_is_refused() -> None:
    assert refused(sealed_for_bob(cert=b"\x92\xc4\x01x\xc4\x01y")) is CertificateProblem.MALFORMED
    with pytest.raises(CertificateError) as caught:
        decode_sender_certificate(b"\xff" * 600)
    assert caught.value.problem is CertificateProblem.MALFORMED


def test_a_certificate_for_another_identity_than_the_sealer_is_refused() -> None:
    """Mallory seals with her own identity but Alice's certificate: the inner layer opens
    (Mallory wrote it) but the certificate names another key."""
    envelope = sealed_for_bob(cert=certificate(), sender=MALLORY_IDENTITY)
    assert refused(envelope) is SealedProblem.SENDER_MISMATCH


def test_a_certificate_whose_keys_are_not_the_pinned_ones_is_refused() -> None:
    """A relay certifies Mallory's device under Alice's user id (with Mallory's own keys):
    everything opens, but the keys are not those pinned for Alice."""
    hostile = certificate(identity=MALLORY_IDENTITY, account_key=MALLORY_IDENTITY.public_key)
    opened = open_as_bob(sealed_for_bob(cert=hostile, sender=MALLORY_IDENTITY))
    assert opened.certificate.user_id == ALICE.user_id
    for account_key, identity_key in ((ALICE_ACCOUNT.public_key, ALICE_IDENTITY.public_key),
                                      (MALLORY_IDENTITY.public_key, ALICE_IDENTITY.public_key),
                                      (ALICE_ACCOUNT.public_key, MALLORY_IDENTITY.public_key),
                                      (None, None)):
        with pytest.raises(SealedSenderError) as caught:
            check_pinned_sender(opened.certificate, account_key=account_key,
                                identity_key=identity_key)
        assert caught.value.problem is SealedProblem.NOT_PINNED


def test_tampering_with_the_outer_layer_is_refused() -> None:
    envelope = bytearray(sealed_for_bob())
    for offset in (1, 41, 41 + 47):  # the ephemeral key, the outer ciphertext and its tag
        tampered = bytearray(envelope)
        tampered[offset] ^= 0x01
        assert refused(bytes(tampered)) is SealedProblem.OUTER_LAYER


def test_tampering_with_the_inner_layer_is_refused() -> None:
    envelope = sealed_for_bob()
    for offset in (41 + 48, len(envelope) - 1):
        tampered = bytearray(envelope)
        tampered[offset] ^= 0x80
        assert refused(bytes(tampered)) is SealedProblem.INNER_LAYER
    assert refused(envelope[:-1]) is SealedProblem.INNER_LAYER


def test_an_envelope_for_another_device_is_refused() -> None:
    envelope = sealed_for_bob(recipient=BOB_PHONE_2_IDENTITY)
    assert refused(envelope) is SealedProblem.WRONG_RECIPIENT
    assert open_as_bob(envelope, identity=BOB_PHONE_2_IDENTITY).message


def test_a_recipient_hint_rewritten_to_this_device_still_fails_the_outer_layer() -> None:
    for_phone_2 = sealed_for_bob(recipient=BOB_PHONE_2_IDENTITY)
    for_bob = sealed_for_bob()
    rewritten = for_phone_2[:33] + for_bob[33:41] + for_phone_2[41:]
    assert refused(rewritten) is SealedProblem.OUTER_LAYER


def test_malformed_and_unknown_versions_are_refused() -> None:
    envelope = sealed_for_bob()
    assert refused(b"") is SealedProblem.MALFORMED
    assert refused(envelope[:60]) is SealedProblem.MALFORMED
    assert refused(b"\x02" + envelope[1:]) is SealedProblem.UNSUPPORTED_VERSION
    assert refused(envelope + bytes(MAX_SEALED_ENVELOPE_SIZE)) is SealedProblem.MALFORMED


def test_each_refusal_names_a_distinct_reason() -> None:
    reasons = [*SealedProblem, *CertificateProblem]
    assert len({reason.value for reason in reasons}) == len(reasons)


def test_a_previous_relay_key_is_accepted_until_its_certificates_expire() -> None:
    """Rotation with overlap: key 1 signed until the rotation, key 2 signs from then on; the
    client pins both, key 1 until the last certificate it signed has expired."""
    rotation_ms = NOW_MS
    pinned = (RelayCertificateKey(key_id=1, public_key=OLD_RELAY_KEY.public_key,
                                  not_after_ms=rotation_ms + DAY_MS),
              RelayCertificateKey(key_id=2, public_key=RELAY_KEY.public_key,
                                  not_after_ms=rotation_ms + 365 * DAY_MS))
    old = certificate(signer=OLD_RELAY_KEY, key_id=1, expires_ms=rotation_ms + DAY_MS)
    new = certificate(expires_ms=rotation_ms + 2 * DAY_MS)
    for now_ms in (rotation_ms, rotation_ms + DAY_MS - 1):
        assert verify_sender_certificate(old, pinned, now_ms=now_ms).key_id == 1
        assert verify_sender_certificate(new, pinned, now_ms=now_ms).key_id == 2
    with pytest.raises(CertificateError) as caught:
        verify_sender_certificate(old, pinned, now_ms=rotation_ms + DAY_MS)
    assert caught.value.problem is CertificateProblem.EXPIRED
    assert verify_sender_certificate(new, pinned, now_ms=rotation_ms + DAY_MS).key_id == 2
    # A certificate the retired key signed to last longer is refused once the key is retired.
    long_lived = certificate(signer=OLD_RELAY_KEY, key_id=1, expires_ms=rotation_ms + 9 * DAY_MS)
    with pytest.raises(CertificateError) as caught:
        verify_sender_certificate(long_lived, pinned, now_ms=rotation_ms + DAY_MS + 1)
    assert caught.value.problem is CertificateProblem.KEY_RETIRED


def test_the_certificate_issuer_refuses_out_of_range_fields() -> None:
    with pytest.raises(ValueError, match="user_id"):
        certificate(user_id="")
    with pytest.raises(ValueError, match="expires_ms"):
        certificate(expires_ms=-1)


def test_delivery_tokens_follow_the_profile_key_and_register_as_a_hash() -> None:
    key = new_profile_key(SeededRandom(b"profile"))
    token = delivery_token(key)
    assert len(token) == DELIVERY_TOKEN_SIZE and token == delivery_token(key)
    assert delivery_token(new_profile_key(SeededRandom(b"rotated"))) != token
    assert len(delivery_token_hash(token)) == 32 and delivery_token_hash(token) != token
    with pytest.raises(ValueError):
        delivery_token(b"short")
