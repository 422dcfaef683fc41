"""The protocol's limits: every size and count a peer controls, with its unit and reason.

``docs/PROTOCOL.md`` "Limits" is the same table. Sans-IO: constants only.
"""

from __future__ import annotations

from crypto.device_list import MAX_DEVICE_LIST_SIZE

__all__ = [
    "ALPN",
    "BLOB_ID_SIZE",
    "IDENTITY_KEY_SIZE",
    "LENGTH_PREFIX_SIZE",
    "LINK_CHANNEL_ID_SIZE",
    "LINK_CHANNEL_TTL_MS",
    "LINK_FETCH_WAIT_MS",
    "MAX_ACK_IDS",
    "MAX_BLOB_OFFSET",
    "MAX_BUFFERED_BYTES_BEFORE_AUTHENTICATION",
    "MAX_BUFFERED_BYTES_PER_CONNECTION",
    "MAX_CIPHERTEXT_SIZE",
    "MAX_CLIENT_MESSAGE_ID",
    "MAX_CONCURRENT_STREAMS",
    "MAX_DEVICES_PER_SEND",
    "MAX_DEVICES_PER_USER",
    "MAX_DEVICE_ID",
    "MAX_DEVICE_LIST_SIZE",
    "MAX_ENVELOPE_ID",
    "MAX_FRAME_SIZE",
    "MAX_FRAME_SIZE_BEFORE_AUTHENTICATION",
    "MAX_LINK_PAYLOAD_SIZE",
    "MAX_LINK_POSTS_PER_SIDE",
    "MAX_LOOKUP_PHONES",
    "MAX_PHONE_LENGTH",
    "MAX_REASON_LENGTH",
    "MAX_RETRY_AFTER_MS",
    "MAX_TIMESTAMP_MS",
    "MAX_USER_ID_LENGTH",
    "NONCE_SIZE",
    "PROTOCOL_VERSION",
    "RETRY_AFTER_BUFFERS_MS",
    "SIGNATURE_SIZE",
    "VERIFICATION_CODE_LENGTH",
]

PROTOCOL_VERSION = 1  # first element of every frame; bumped only for incompatible changes
ALPN = "cryptopass/1"  # TLS ALPN token; names the major version so old peers fail at handshake
LENGTH_PREFIX_SIZE = 4  # bytes of big-endian unsigned length before each frame's msgpack body
MAX_FRAME_SIZE = 2 * 1024 * 1024  # bytes of msgpack after the prefix: a full SEND fits
MAX_CIPHERTEXT_SIZE = 96 * 1024  # bytes per device ciphertext: text messages; files go elsewhere
MAX_DEVICES_PER_SEND = 16  # payload entries in one SEND, equal to the devices a user may hold
MAX_DEVICES_PER_USER = MAX_DEVICES_PER_SEND  # device ids in a directory entry: a SEND covers all
MAX_LOOKUP_PHONES = 32  # phone numbers per LOOKUP: bounds the directory work of one request
MAX_ACK_IDS = 1024  # envelope ids per ACK: one drained backlog page, bounds one transaction
MAX_REASON_LENGTH = 256  # characters of an ERROR reason: for humans and logs, not for parsing
MAX_PHONE_LENGTH = 32  # characters of a phone number: E.164 is 16 at most, room for typos to fail
MAX_USER_ID_LENGTH = 64  # characters of an opaque user id assigned by the relay
NONCE_SIZE = 32  # bytes of the server's authentication challenge: 256 bits, never reused
IDENTITY_KEY_SIZE = 32  # bytes of an Ed25519 public key (RFC 8032 section 5.1.5)
SIGNATURE_SIZE = 64  # bytes of an Ed25519 signature (RFC 8032 section 5.1.6)
VERIFICATION_CODE_LENGTH = 6  # ASCII digits of an SMS enrolment code
MAX_CLIENT_MESSAGE_ID = 2**63 - 1  # client-chosen idempotency key: fits a signed 64-bit column
MAX_ENVELOPE_ID = 2**63 - 1  # relay-assigned envelope id: fits a signed 64-bit column
MAX_DEVICE_ID = 2**31 - 1  # device ids start at 1: fits a signed 32-bit column
MAX_TIMESTAMP_MS = 2**63 - 1  # milliseconds since the Unix epoch: fits a signed 64-bit column
# MAX_DEVICE_LIST_SIZE (642 bytes, crypto.device_list): a signed device list of 16 devices
LINK_CHANNEL_ID_SIZE = 16  # bytes of a link channel id: 128 random bits, unguessable
MAX_LINK_PAYLOAD_SIZE = 8 * 1024  # bytes of one provisioning message: keys and a device list
MAX_LINK_POSTS_PER_SIDE = 4  # messages each side may post over a channel's life (and per fetch)
LINK_CHANNEL_TTL_MS = 10 * 60 * 1000  # a link channel lives 10 minutes after LINK_OPEN
LINK_FETCH_WAIT_MS = 20_000  # a LINK_FETCH with nothing waiting is answered after at most 20 s
BLOB_ID_SIZE = 32  # bytes of a blob id: 256 random bits, the capability to read the blob
MAX_BLOB_OFFSET = 2**63 - 1  # bytes of a blob's size or an offset in it: fits a signed 64-bit
# column (the relay's own maximum, its setting blob_max_bytes, is far lower: BLOB_TOO_LARGE)
MAX_RETRY_AFTER_MS = 24 * 60 * 60 * 1000  # an ERROR's retry_after_ms: a day, the longest period
# Connection budgets (PROTOCOL.md "Connection budgets"): what one client may make the relay hold.
MAX_CONCURRENT_STREAMS = 32  # client request streams open at once (QUIC MAX_STREAMS, per kind)
MAX_FRAME_SIZE_BEFORE_AUTHENTICATION = 16 * 1024  # bytes of a frame until AUTHENTICATE arrives:
# enrolment, HELLO, AUTHENTICATE and link frames are small (a LINK_POST is at most 8 KiB of payload)
MAX_BUFFERED_BYTES_BEFORE_AUTHENTICATION = 4 * 1024 * 1024  # bytes of incomplete frames an
# unauthenticated connection may make the relay hold (counted at their declared length)
MAX_BUFFERED_BYTES_PER_CONNECTION = 16 * 1024 * 1024  # the same once authenticated: 7 full SENDs
RETRY_AFTER_BUFFERS_MS = 1000  # retry_after_ms of a frame refused for buffer space: frames in
# flight complete within round trips, so a second is ample
