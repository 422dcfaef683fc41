"""crypto.primitives: published known answers through our wrappers, then adversaries."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from crypto.primitives import (
    AES256GCM_TAG_SIZE,
    MLKEM1024_CIPHERTEXT_SIZE,
    MLKEM1024_PUBLIC_KEY_SIZE,
    MLKEM1024_SHARED_SECRET_SIZE,
    DecapsulationError,
    DecryptionError,
    InvalidPublicKeyError,
    RandomSource,
    SeededRandom,
    SignatureError,
    SystemRandom,
    aes256gcm_open,
    aes256gcm_seal,
    ed25519_generate,
    ed25519_keypair_from_private,
    ed25519_sign,
    ed25519_verify,
    hkdf_sha256,
    hkdf_sha256_expand,
    hkdf_sha256_extract,
    mlkem1024_decapsulate,
    mlkem1024_encapsulate,
    mlkem1024_generate,
    mlkem1024_keypair_from_seed,
    x25519_dh,
    x25519_generate,
    x25519_keypair_from_private,
)

h = bytes.fromhex


def flip_bit(data: bytes, index: int) -> bytes:
    """Return `data` with the low bit of byte `index` flipped."""
    mutable = bytearray(data)
    mutable[index] ^= 0x01
    return bytes(mutable)


# --- X25519: known answers --------------------------------------------------------------------

# https://www.rfc-editor.org/rfc/rfc7748#section-5.2 (the two single-call test vectors)
X25519_FUNCTION_VECTORS = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        # The top bit of this u-coordinate is set: X25519 must ignore it (RFC 7748 §5).
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]


@pytest.mark.parametrize(("scalar", "u_coordinate", "expected"), X25519_FUNCTION_VECTORS)
def test_x25519_rfc7748_section_5_2(scalar: str, u_coordinate: str, expected: str) -> None:
    assert x25519_dh(h(scalar), h(u_coordinate)) == h(expected)


# https://www.rfc-editor.org/rfc/rfc7748#section-5.2 (iterated: k, u = X25519(k, u), k; from 9)
@pytest.mark.parametrize(
    ("iterations", "expected"),
    [
        (1, "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"),
        (1000, "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"),
    ],
)
def test_x25519_rfc7748_section_5_2_iterated(iterations: int, expected: str) -> None:
    scalar = u_coordinate = (9).to_bytes(32, "little")
    for _ in range(iterations):
        scalar, u_coordinate = x25519_dh(scalar, u_coordinate), scalar
    assert scalar == h(expected)


# https://www.rfc-editor.org/rfc/rfc7748#section-6.1
def test_x25519_rfc7748_section_6_1_diffie_hellman() -> None:
    alice = x25519_keypair_from_private(
        h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob = x25519_keypair_from_private(
        h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    )
    assert alice.public_key == h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert bob.public_key == h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert x25519_dh(alice.private_key, bob.public_key) == shared
    assert x25519_dh(bob.private_key, alice.public_key) == shared


# --- Ed25519: known answers -------------------------------------------------------------------

# https://www.rfc-editor.org/rfc/rfc8032#section-7.1 (TEST 1, TEST 2, TEST 3)
ED25519_VECTORS = [
    pytest.param(
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        id="TEST 1",
    ),
    pytest.param(
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        id="TEST 2",
    ),
    pytest.param(
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        id="TEST 3",
    ),
]


@pytest.mark.parametrize(("secret_key", "public_key", "message", "signature"), ED25519_VECTORS)
def test_ed25519_rfc8032_section_7_1(
    secret_key: str, public_key: str, message: str, signature: str
) -> None:
    key_pair = ed25519_keypair_from_private(h(secret_key))
    assert key_pair.public_key == h(public_key)
    assert ed25519_sign(key_pair.private_key, h(message)) == h(signature)
    ed25519_verify(h(public_key), h(message), h(signature))


# --- HKDF-SHA256: known answers ---------------------------------------------------------------

# https://www.rfc-editor.org/rfc/rfc5869#appendix-A (A.1, A.2, A.3: the SHA-256 cases)
HKDF_VECTORS = [
    pytest.param(
        "0b" * 22,
        "000102030405060708090a0b0c",
        "f0f1f2f3f4f5f6f7f8f9",
        42,
        "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
        id="A.1",
    ),
    pytest.param(
        bytes(range(0x00, 0x50)).hex(),
        bytes(range(0x60, 0xB0)).hex(),
        bytes(range(0xB0, 0x100)).hex(),
        82,
        "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
        id="A.2",
    ),
    pytest.param(
        "0b" * 22,
        "",
        "",
        42,
        "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
        id="A.3",
    ),
]


@pytest.mark.parametrize(("ikm", "salt", "info", "length", "prk", "okm"), HKDF_VECTORS)
def test_hkdf_sha256_rfc5869_appendix_a(
    ikm: str, salt: str, info: str, length: int, prk: str, okm: str
) -> None:
    assert hkdf_sha256_extract(salt=h(salt), input_key_material=h(ikm)) == h(prk)
    assert hkdf_sha256_expand(pseudorandom_key=h(prk), info=h(info), length=length) == h(okm)
    assert hkdf_sha256(salt=h(salt), input_key_material=h(ikm), info=h(info), length=length) == h(
        okm
    )


@pytest.mark.parametrize("length", [0, -1, 255 * 32 + 1])
def test_hkdf_refuses_lengths_outside_rfc5869_bounds(length: int) -> None:
    with pytest.raises(ValueError, match="output length"):
        hkdf_sha256(salt=b"", input_key_material=b"ikm", info=b"", length=length)


def test_hkdf_expand_refuses_short_pseudorandom_key() -> None:
    with pytest.raises(ValueError, match="pseudorandom key"):
        hkdf_sha256_expand(pseudorandom_key=bytes(31), info=b"", length=32)


# --- AES-256-GCM: known answers ---------------------------------------------------------------

# McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)", test cases 13-16 (256-bit key):
# https://csrc.nist.gov/CSRC/media/Projects/Block-Cipher-Techniques/documents/BCM/proposed-modes/gcm/gcm-spec.pdf
GCM_KEY_15 = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"
GCM_IV_15 = "cafebabefacedbaddecaf888"
GCM_PLAINTEXT_15 = (
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"
)
GCM_CIPHERTEXT_15 = (
    "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
    "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad"
)
AES_GCM_VECTORS = [
    pytest.param("00" * 32, "00" * 12, "", "", "", "530f8afbc74536b9a963b4f1c4cb738b", id="TC13"),
    pytest.param(
        "00" * 32,
        "00" * 12,
        "00" * 16,
        "",
        "cea7403d4d606b6e074ec5d3baf39d18",
        "d0d1c8a799996bf0265b98b5d48ab919",
        id="TC14",
    ),
    pytest.param(
        GCM_KEY_15,
        GCM_IV_15,
        GCM_PLAINTEXT_15,
        "",
        GCM_CIPHERTEXT_15,
        "b094dac5d93471bdec1a502270e3cc6c",
        id="TC15",
    ),
    pytest.param(
        GCM_KEY_15,
        GCM_IV_15,
        GCM_PLAINTEXT_15[:120],
        "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        GCM_CIPHERTEXT_15[:120],
        "76fc6ece0f4e1768cddf8853bb2d551b",
        id="TC16",
    ),
]


@pytest.mark.parametrize(
    ("key", "nonce", "plaintext", "associated_data", "ciphertext", "tag"), AES_GCM_VECTORS
)
def test_aes256gcm_mcgrew_viega(
    key: str, nonce: str, plaintext: str, associated_data: str, ciphertext: str, tag: str
) -> None:
    sealed = aes256gcm_seal(
        key=h(key), nonce=h(nonce), plaintext=h(plaintext), associated_data=h(associated_data)
    )
    assert sealed == h(ciphertext + tag)
    assert aes256gcm_open(
        key=h(key), nonce=h(nonce), ciphertext=sealed, associated_data=h(associated_data)
    ) == h(plaintext)


# --- ML-KEM-1024 ------------------------------------------------------------------------------

FIXED_MLKEM_SEED = bytes(range(64))
MLKEM1024_PUBLIC_KEY_SHA256 = "c7b8fa0aa471d5ae18922d6ccad5b31e1d84f92ae723abfd13747018740a8530"


def test_mlkem1024_keypair_from_seed_is_deterministic_and_sized() -> None:
    first = mlkem1024_keypair_from_seed(FIXED_MLKEM_SEED)
    second = mlkem1024_keypair_from_seed(FIXED_MLKEM_SEED)
    assert first.public_key == second.public_key
    assert len(first.public_key) == MLKEM1024_PUBLIC_KEY_SIZE
    assert first.seed == FIXED_MLKEM_SEED
    # Not a published vector: a regression pin taken from cryptography 50 / OpenSSL, so a change
    # in how the 64-byte seed (d || z, FIPS 203 §7.1) is interpreted cannot pass unnoticed.
    assert hashlib.sha256(first.public_key).hexdigest() == MLKEM1024_PUBLIC_KEY_SHA256


def load_vector(name: str) -> dict[str, bytes]:
    """Read `key = hex` lines from tests/vectors/<name>, skipping # comments."""
    values: dict[str, bytes] = {}
    for line in (Path(__file__).parent / "vectors" / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" = ")
            values[key] = bytes.fromhex(value)
    return values


# https://github.com/C2SP/CCTV/blob/main/ML-KEM/unluckysample/ML-KEM-1024.txt
CCTV_UNLUCKY = load_vector("mlkem1024_cctv_unluckysample.txt")


def test_mlkem1024_cctv_known_answer_decapsulation() -> None:
    # The published K only comes out if both the seed expansion (FIPS 203 §7.1, d || z) and
    # decapsulation (§7.3) match the standard, since K = G(m || H(ek)).
    seed = CCTV_UNLUCKY["d"] + CCTV_UNLUCKY["z"]
    assert mlkem1024_decapsulate(seed, CCTV_UNLUCKY["c"]) == CCTV_UNLUCKY["K"]


@pytest.mark.parametrize("index", [0, 1000, MLKEM1024_CIPHERTEXT_SIZE - 1])
def test_mlkem1024_implicit_rejection_matches_fips203(index: int) -> None:
    # FIPS 203 §6.3 (Algorithm 18, ML-KEM.Decaps_internal): a ciphertext that does not
    # re-encrypt yields K = J(z || c) = SHAKE256(z || c, 256 bits), computed here independently.
    seed = CCTV_UNLUCKY["d"] + CCTV_UNLUCKY["z"]
    tampered = flip_bit(CCTV_UNLUCKY["c"], index)
    expected = hashlib.shake_256(CCTV_UNLUCKY["z"] + tampered).digest(32)
    assert mlkem1024_decapsulate(seed, tampered) == expected


def test_mlkem1024_round_trip_from_fixed_seed() -> None:
    key_pair = mlkem1024_keypair_from_seed(FIXED_MLKEM_SEED)
    encapsulation = mlkem1024_encapsulate(key_pair.public_key)
    assert len(encapsulation.ciphertext) == MLKEM1024_CIPHERTEXT_SIZE
    assert len(encapsulation.shared_secret) == MLKEM1024_SHARED_SECRET_SIZE
    assert mlkem1024_decapsulate(key_pair.seed, encapsulation.ciphertext) == (
        encapsulation.shared_secret
    )


@pytest.mark.parametrize("index", [0, 777, MLKEM1024_CIPHERTEXT_SIZE - 1])
def test_mlkem1024_tampered_ciphertext_is_implicitly_rejected(index: int) -> None:
    # FIPS 203 §6.3: decapsulation of a modified ciphertext returns a pseudorandom secret
    # (J(z || c)) instead of raising, and the same one every time.
    key_pair = mlkem1024_keypair_from_seed(FIXED_MLKEM_SEED)
    encapsulation = mlkem1024_encapsulate(key_pair.public_key)
    tampered = flip_bit(encapsulation.ciphertext, index)
    rejected = mlkem1024_decapsulate(key_pair.seed, tampered)
    assert len(rejected) == MLKEM1024_SHARED_SECRET_SIZE
    assert rejected != encapsulation.shared_secret
    assert mlkem1024_decapsulate(key_pair.seed, tampered) == rejected


def test_mlkem1024_wrong_key_yields_a_different_secret() -> None:
    intended = mlkem1024_keypair_from_seed(FIXED_MLKEM_SEED)
    other = mlkem1024_keypair_from_seed(bytes(64))
    encapsulation = mlkem1024_encapsulate(intended.public_key)
    assert mlkem1024_decapsulate(other.seed, encapsulation.ciphertext) != (
        encapsulation.shared_secret
    )


@pytest.mark.parametrize(
    "length", [0, MLKEM1024_CIPHERTEXT_SIZE - 1, MLKEM1024_CIPHERTEXT_SIZE + 1]
)
def test_mlkem1024_refuses_wrong_length_ciphertext(length: int) -> None:
    with pytest.raises(DecapsulationError):
        mlkem1024_decapsulate(FIXED_MLKEM_SEED, bytes(length))


@pytest.mark.parametrize(
    "public_key",
    [
        pytest.param(bytes(MLKEM1024_PUBLIC_KEY_SIZE - 1), id="short"),
        pytest.param(bytes(MLKEM1024_PUBLIC_KEY_SIZE + 1), id="long"),
        # Every 12-bit coefficient 0xfff >= q = 3329 fails the FIPS 203 §7.2 modulus check.
        pytest.param(b"\xff" * MLKEM1024_PUBLIC_KEY_SIZE, id="coefficients-out-of-range"),
    ],
)
def test_mlkem1024_refuses_malformed_public_key(public_key: bytes) -> None:
    with pytest.raises(InvalidPublicKeyError):
        mlkem1024_encapsulate(public_key)


def test_mlkem1024_refuses_wrong_length_seed() -> None:
    with pytest.raises(ValueError, match="64 bytes"):
        mlkem1024_keypair_from_seed(bytes(32))


# --- Randomness -------------------------------------------------------------------------------


def test_random_sources_satisfy_the_protocol() -> None:
    assert isinstance(SystemRandom(), RandomSource)
    assert isinstance(SeededRandom(b"seed"), RandomSource)


def test_system_random_returns_requested_length() -> None:
    source = SystemRandom()
    assert len(source.bytes(0)) == 0
    assert len(source.bytes(33)) == 33
    assert source.bytes(32) != source.bytes(32)


def test_seeded_random_is_one_deterministic_stream() -> None:
    assert SeededRandom(b"seed").bytes(64) == SeededRandom(b"seed").bytes(64)
    source = SeededRandom(b"seed")
    assert source.bytes(10) + source.bytes(54) == SeededRandom(b"seed").bytes(64)
    assert SeededRandom(b"seed").bytes(32) != SeededRandom(b"seeds").bytes(32)


def test_seeded_random_refuses_negative_length() -> None:
    with pytest.raises(ValueError, match="negative"):
        SeededRandom(b"seed").bytes(-1)


def test_generators_draw_from_the_injected_source() -> None:
    assert x25519_generate(SeededRandom(b"a")) == x25519_generate(SeededRandom(b"a"))
    assert ed25519_generate(SeededRandom(b"a")) == ed25519_generate(SeededRandom(b"a"))
    assert mlkem1024_generate(SeededRandom(b"a")) == mlkem1024_generate(SeededRandom(b"a"))
    assert x25519_generate(SeededRandom(b"a")) != x25519_generate(SeededRandom(b"b"))


def test_key_pair_reprs_do_not_leak_private_keys() -> None:
    private_key = bytes(range(32))
    for key_pair in (
        x25519_keypair_from_private(private_key),
        ed25519_keypair_from_private(private_key),
    ):
        assert private_key.hex() not in repr(key_pair)
    assert FIXED_MLKEM_SEED.hex() not in repr(mlkem1024_keypair_from_seed(FIXED_MLKEM_SEED))


# --- Adversaries: X25519 ----------------------------------------------------------------------


# Low-order points from https://cr.yp.to/ecdh.html#validate: each gives the all-zero output
# that RFC 7748 §6.1 says to refuse.
@pytest.mark.parametrize(
    "low_order_point",
    [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ],
)
def test_x25519_refuses_low_order_points(low_order_point: str) -> None:
    private_key = x25519_generate(SystemRandom()).private_key
    with pytest.raises(InvalidPublicKeyError, match="all zero"):
        x25519_dh(private_key, h(low_order_point))


@pytest.mark.parametrize("length", [0, 31, 33])
def test_x25519_refuses_wrong_length_public_key(length: int) -> None:
    with pytest.raises(InvalidPublicKeyError):
        x25519_dh(bytes(range(32)), bytes(length))


def test_x25519_refuses_wrong_length_private_key_as_local_misuse() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        x25519_dh(bytes(31), bytes(32))
    with pytest.raises(ValueError, match="32 bytes"):
        x25519_keypair_from_private(bytes(33))


# --- Adversaries: Ed25519 ---------------------------------------------------------------------

ED25519_TEST_2 = ED25519_VECTORS[1].values
ED25519_PUBLIC_KEY = h(str(ED25519_TEST_2[1]))
ED25519_MESSAGE = h(str(ED25519_TEST_2[2]))
ED25519_SIGNATURE = h(str(ED25519_TEST_2[3]))


def test_ed25519_rejects_wrong_key() -> None:
    other = ed25519_generate(SeededRandom(b"other")).public_key
    with pytest.raises(SignatureError):
        ed25519_verify(other, ED25519_MESSAGE, ED25519_SIGNATURE)


def test_ed25519_rejects_tampered_message() -> None:
    with pytest.raises(SignatureError):
        ed25519_verify(ED25519_PUBLIC_KEY, b"\x73", ED25519_SIGNATURE)


@pytest.mark.parametrize("index", [0, 31, 32, 63])
def test_ed25519_rejects_tampered_signature(index: int) -> None:
    with pytest.raises(SignatureError):
        ed25519_verify(ED25519_PUBLIC_KEY, ED25519_MESSAGE, flip_bit(ED25519_SIGNATURE, index))


def test_ed25519_rejects_signature_with_unreduced_s() -> None:
    # RFC 8032 §5.1.7: S must be < L; S + L is the classic malleability forgery.
    group_order = 2**252 + 27742317777372353535851937790883648493
    r, s = ED25519_SIGNATURE[:32], int.from_bytes(ED25519_SIGNATURE[32:], "little")
    malleated = r + (s + group_order).to_bytes(32, "little")
    with pytest.raises(SignatureError):
        ed25519_verify(ED25519_PUBLIC_KEY, ED25519_MESSAGE, malleated)


@pytest.mark.parametrize(
    ("public_key", "signature"),
    [
        pytest.param(ED25519_PUBLIC_KEY[:31], ED25519_SIGNATURE, id="short-key"),
        pytest.param(ED25519_PUBLIC_KEY, ED25519_SIGNATURE[:63], id="short-signature"),
        pytest.param(ED25519_PUBLIC_KEY, ED25519_SIGNATURE + b"\x00", id="long-signature"),
        pytest.param(b"", b"", id="empty"),
    ],
)
def test_ed25519_rejects_malformed_inputs(public_key: bytes, signature: bytes) -> None:
    with pytest.raises(SignatureError):
        ed25519_verify(public_key, ED25519_MESSAGE, signature)


# --- Adversaries: AES-256-GCM -----------------------------------------------------------------

KEY = bytes(range(32))
NONCE = bytes(range(12))
PLAINTEXT = b"attack at dawn"
ASSOCIATED_DATA = b"header"
SEALED = aes256gcm_seal(key=KEY, nonce=NONCE, plaintext=PLAINTEXT, associated_data=ASSOCIATED_DATA)


def open_sealed(
    *,
    key: bytes = KEY,
    nonce: bytes = NONCE,
    ciphertext: bytes = SEALED,
    associated_data: bytes = ASSOCIATED_DATA,
) -> bytes:
    return aes256gcm_open(
        key=key, nonce=nonce, ciphertext=ciphertext, associated_data=associated_data
    )


def test_aes256gcm_round_trip() -> None:
    assert len(SEALED) == len(PLAINTEXT) + AES256GCM_TAG_SIZE
    assert open_sealed() == PLAINTEXT


@pytest.mark.parametrize(
    "tampering",
    [
        pytest.param({"key": flip_bit(KEY, 0)}, id="wrong-key"),
        pytest.param({"nonce": flip_bit(NONCE, 11)}, id="wrong-nonce"),
        pytest.param({"associated_data": b"headex"}, id="tampered-associated-data"),
        pytest.param({"associated_data": b""}, id="missing-associated-data"),
        pytest.param({"ciphertext": flip_bit(SEALED, 0)}, id="tampered-ciphertext"),
        pytest.param({"ciphertext": flip_bit(SEALED, len(SEALED) - 1)}, id="tampered-tag"),
        pytest.param({"ciphertext": SEALED[:-1]}, id="truncated-tag"),
        pytest.param({"ciphertext": SEALED[1:]}, id="truncated-front"),
        pytest.param({"ciphertext": SEALED[: AES256GCM_TAG_SIZE - 1]}, id="shorter-than-tag"),
        pytest.param({"ciphertext": b""}, id="empty"),
        pytest.param({"ciphertext": SEALED + b"\x00"}, id="extended"),
        pytest.param({"nonce": NONCE[:11]}, id="short-nonce"),
        pytest.param({"nonce": b""}, id="empty-nonce"),
    ],
)
def test_aes256gcm_open_raises_one_error_for_every_failure(tampering: dict[str, bytes]) -> None:
    with pytest.raises(DecryptionError) as raised:
        open_sealed(**tampering)
    # One message for every cause, so nothing tells an attacker which check failed.
    assert str(raised.value) == "AES-256-GCM decryption failed"


def test_aes256gcm_wrong_key_length_is_local_misuse() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        open_sealed(key=bytes(16))
    with pytest.raises(ValueError, match="32 bytes"):
        aes256gcm_seal(key=bytes(16), nonce=NONCE, plaintext=b"", associated_data=b"")
    with pytest.raises(ValueError, match="12 bytes"):
        aes256gcm_seal(key=KEY, nonce=bytes(16), plaintext=b"", associated_data=b"")
