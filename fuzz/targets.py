"""One-input fuzz targets: bytes in, the checks of ``fuzz.checks`` applied, a finding raised.

A coverage-guided fuzzer (atheris, ``python -m fuzz.run``) calls a target with the bytes it
mutates; ``tests/test_fuzz_protocol.py`` calls them with the corpus and with hypothesis. The
targets read their input as a small program, so that a mutation changes one step:

``frame_decoder``
    byte 0: the frame size limit (even: MAX_FRAME_SIZE; odd: the limit before authentication);
    byte 1: how many cuts follow (mod 8), each a big-endian u16 offset; the rest is one
    stream's bytes, decoded whole and cut at those offsets (``check_frame_stream``), and also
    given to ``decode_body`` as one frame's body.

``server_protocol``
    byte 0: the pool every connection shares (mod 4: the relay's default, 64 KiB, 20 KiB or
    4 KiB, the unauthenticated share half of it); then steps until the input ends, each an
    opcode byte whose high bit picks one of two connections and whose low nibble the step:
    RECEIVE (stream selector, flags (bit 0: end of stream), u16 length, that many bytes),
    RESET (stream selector), CHALLENGE (u8 nonce length, the nonce), AUTHENTICATE with a good
    or a bad signature, CONFIRM, REFUSE, CLOSE and PROBE; other nibbles are skipped.

``ServerSteps`` writes that program, for the corpus (fuzz/make_corpus.py).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from fuzz.checks import ServerDriver, check_frame_stream, unchanged_on_protocol_error
from wire.buffers import BufferPool
from wire.codec import decode_body
from wire.frames import MAX_FRAME_SIZE, NONCE_SIZE
from wire.limits import MAX_FRAME_SIZE_BEFORE_AUTHENTICATION

__all__ = ["STREAMS", "TARGETS", "ServerSteps", "Step", "frame_decoder", "server_protocol"]

_U16 = struct.Struct(">H")

STREAMS = (0, 4, 8, 12, 1, 2, 3, 6, 7, 4000)
"""Streams a step may name (its selector byte mod 10): client bidirectional ones (the only
place for requests) first, then every other kind, and a far one."""

FRAME_SIZE_LIMITS = (MAX_FRAME_SIZE, MAX_FRAME_SIZE_BEFORE_AUTHENTICATION)
POOL_LIMITS = (None, 64 * 1024, 20 * 1024, 4 * 1024)
"""The shared pool's byte limit per input (None: the relay's default), so that small inputs
reach its refusals too."""

MAX_CUTS = 8
MAX_CHUNK = 0xFFFF
"""The most bytes one RECEIVE step carries (its length is a u16)."""


class Step(IntEnum):
    """A server_protocol step: the low nibble of its opcode byte."""

    RECEIVE = 0
    RESET = 1
    CHALLENGE = 2
    AUTHENTICATE = 3
    AUTHENTICATE_BADLY = 4
    CONFIRM = 5
    REFUSE = 6
    CLOSE = 7
    PROBE = 8


class _Reader:
    """Reads a target's input; past its end every read is empty or zero."""

    def __init__(self, data: bytes) -> None:
        self._data, self._offset = data, 0

    @property
    def exhausted(self) -> bool:
        return self._offset >= len(self._data)

    def byte(self) -> int:
        if self.exhausted:
            return 0
        self._offset += 1
        return self._data[self._offset - 1]

    def u16(self) -> int:
        return self.byte() << 8 | self.byte()

    def take(self, size: int) -> bytes:
        chunk = self._data[self._offset:self._offset + size]
        self._offset += len(chunk)
        return chunk


def frame_decoder(data: bytes) -> None:
    """Target: one stream's bytes through the frame decoder (see the module's doc)."""
    reader = _Reader(data)
    limit = FRAME_SIZE_LIMITS[reader.byte() % len(FRAME_SIZE_LIMITS)]
    cuts = [reader.u16() for _ in range(reader.byte() % MAX_CUTS)]
    stream = reader.take(len(data))
    check_frame_stream(stream, cuts, max_frame_size=limit)
    unchanged_on_protocol_error(None, lambda: decode_body(stream), "decode_body")


def server_protocol(data: bytes) -> None:
    """Target: a relay's connections driven by the steps the input spells (see the module's
    doc)."""
    reader = _Reader(data)
    pool_limit = POOL_LIMITS[reader.byte() % len(POOL_LIMITS)]
    pool = (BufferPool() if pool_limit is None
            else BufferPool(limit=pool_limit, unauthenticated_limit=pool_limit // 2))
    driver = ServerDriver(pool=pool)
    while not reader.exhausted:
        opcode = reader.byte()
        connection = opcode >> 7
        match opcode & 0x0F:
            case Step.RECEIVE:
                stream_id = STREAMS[reader.byte() % len(STREAMS)]
                end_stream = bool(reader.byte() & 1)
                driver.receive(connection, stream_id, reader.take(reader.u16()), end_stream)
            case Step.RESET:
                driver.reset(connection, STREAMS[reader.byte() % len(STREAMS)])
            case Step.CHALLENGE:
                driver.challenge(connection, reader.take(reader.byte()))
            case Step.AUTHENTICATE:
                driver.authenticate(connection, valid=True)
            case Step.AUTHENTICATE_BADLY:
                driver.authenticate(connection, valid=False)
            case Step.CONFIRM:
                driver.confirm(connection)
            case Step.REFUSE:
                driver.refuse(connection)
            case Step.CLOSE:
                driver.close(connection)
            case Step.PROBE:
                driver.probe(connection)
            case _:
                pass


TARGETS = {"frame_decoder": frame_decoder, "server_protocol": server_protocol}
"""The targets by name: the corpus directory of each is fuzz/corpus/NAME."""


@dataclass
class ServerSteps:
    """Writes a ``server_protocol`` input, step by step (for the corpus)."""

    pool: int = 0
    """Index into POOL_LIMITS."""
    program: bytearray = field(default_factory=bytearray)

    def _op(self, step: Step, connection: int) -> None:
        self.program.append(connection << 7 | step)

    def receive(self, stream_id: int, data: bytes, *, end_stream: bool = False,
                connection: int = 0) -> ServerSteps:
        """RECEIVE ``data`` on ``stream_id`` (one of STREAMS), in steps of at most MAX_CHUNK."""
        chunks = [data[start:start + MAX_CHUNK] for start in range(0, len(data), MAX_CHUNK)]
        for index, chunk in enumerate(chunks or [b""]):
            self._op(Step.RECEIVE, connection)
            self.program += bytes([STREAMS.index(stream_id),
                                   int(end_stream and index == len(chunks) - 1)])
            self.program += _U16.pack(len(chunk)) + chunk
        return self

    def reset(self, stream_id: int, *, connection: int = 0) -> ServerSteps:
        self._op(Step.RESET, connection)
        self.program.append(STREAMS.index(stream_id))
        return self

    def challenge(self, nonce: bytes = b"n" * NONCE_SIZE, *, connection: int = 0) -> ServerSteps:
        self._op(Step.CHALLENGE, connection)
        self.program += bytes([len(nonce)]) + nonce
        return self

    def then(self, step: Step, *, connection: int = 0) -> ServerSteps:
        """A step without operands (AUTHENTICATE, CONFIRM, CLOSE...)."""
        self._op(step, connection)
        return self

    def encode(self) -> bytes:
        return bytes([self.pool]) + bytes(self.program)
