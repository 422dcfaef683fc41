"""An independent reference for Cryptopass safety numbers, written from docs/CRYPTO.md alone.

It uses nothing of the project (standard library only), so the published vectors do not just
repeat `crypto/safety_number.py`: tests/test_crypto_safety_number.py checks the implementation
against the file this script writes, and runs this script to check the file has not drifted.

Before writing, the script checks its iteration structure on libsignal's own published vector
(rust/protocol/src/fingerprint.rs, `fingerprint_test_v1`: 33-byte keys, phone numbers as
stable ids), which docs/CRYPTO.md says ours follows.

Usage: python tests/vectors/safety_number_reference.py [OUTPUT]   (default: the vector file)
"""

import hashlib
import json
import os
import sys

DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "safety_number_v1.json")
ITERATIONS = 5200

# Ed25519 public keys of RFC 8032 section 7.1, TEST 1, TEST 2 and TEST 3.
RFC8032_TEST1 = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
RFC8032_TEST2 = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
RFC8032_TEST3 = "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025"

CASES = [  # (local user id, local account key, remote user id, remote account key)
    ("alice", RFC8032_TEST1, "bob", RFC8032_TEST2),
    ("alice", RFC8032_TEST1, "bob", RFC8032_TEST3),
    ("9f2c4e6a8b0d1f3e5a7c9b1d3f5e7a9c", RFC8032_TEST3,
     "0123456789abcdef0123456789abcdef", RFC8032_TEST1),
    ("a", RFC8032_TEST2, "b" * 64, RFC8032_TEST2),
]

# libsignal's vector: the same structure over its 33-byte keys gives these 60 digits.
LIBSIGNAL_ALICE = ("+14152222222",
                   "0506863bc66d02b40d27b8d49ca7c09e9239236f9d7d25d6fcca5ce13c7064d868")
LIBSIGNAL_BOB = ("+14153333333",
                 "05f781b6fb32fed9ba1cf2de978d4d5da28dc34046ae814402b5c0dbd96fda907b")
LIBSIGNAL_DISPLAY = "300354477692869396892869876765458257569162576843440918079131"


def thirty_digits(user_id: str, key: bytes) -> str:
    """One user's half: start from 0x0000 || key || user id, then 5200 x SHA-512(h || key)."""
    state = b"\x00\x00" + key + user_id.encode("ascii")
    for _ in range(ITERATIONS):
        state = hashlib.sha512(state + key).digest()
    chunks = [int.from_bytes(state[start:start + 5], "big") for start in range(0, 30, 5)]
    return "".join(f"{chunk % 100000:05d}" for chunk in chunks)


def number(local_id: str, local_key: bytes, remote_id: str, remote_key: bytes) -> str:
    """Both halves, the smaller first."""
    halves = sorted([thirty_digits(local_id, local_key), thirty_digits(remote_id, remote_key)])
    return halves[0] + halves[1]


def main() -> None:
    libsignal = number(LIBSIGNAL_ALICE[0], bytes.fromhex(LIBSIGNAL_ALICE[1]),
                       LIBSIGNAL_BOB[0], bytes.fromhex(LIBSIGNAL_BOB[1]))
    if libsignal != LIBSIGNAL_DISPLAY:
        raise SystemExit("the iteration structure does not reproduce libsignal's vector")
    vectors = []
    for local_id, local_key, remote_id, remote_key in CASES:
        local_digits = thirty_digits(local_id, bytes.fromhex(local_key))
        remote_digits = thirty_digits(remote_id, bytes.fromhex(remote_key))
        vectors.append({
            "local_user_id": local_id,
            "local_account_key": local_key,
            "remote_user_id": remote_id,
            "remote_account_key": remote_key,
            "local_digits": local_digits,
            "remote_digits": remote_digits,
            "safety_number": min(local_digits, remote_digits) + max(local_digits, remote_digits),
        })
    document = {
        "format": "cryptopass safety number vectors v1 (docs/CRYPTO.md, Safety numbers)",
        "generator": "tests/vectors/safety_number_reference.py",
        "iterations": ITERATIONS,
        "vectors": vectors,
    }
    output = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUTPUT
    with open(output, "w", encoding="utf-8") as file:
        file.write(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
