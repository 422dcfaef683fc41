"""Writes the seed corpus of each fuzz target (fuzz/corpus/TARGET/NAME) with the real encoder.

    python -m fuzz.make_corpus          # from the repository's root; rewrites fuzz/corpus

The frames are the codec tests' samples, one of every type (``tests.test_frames.SAMPLE_FRAMES``,
which a test keeps complete), so the corpus follows the protocol: when a frame's encoding
changes, ``tests/test_fuzz_protocol.py`` fails until the corpus is written again. The inputs
are deterministic (fixed keys, nonces and ids), so writing it again changes only what changed.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import msgpack

from fuzz.targets import STREAMS, ServerSteps, Step
from tests.test_frames import SAMPLE_FRAMES
from wire.codec import encode_frame
from wire.frames import (
    LENGTH_PREFIX_SIZE,
    MAX_FRAME_SIZE,
    Ack,
    Authenticate,
    FrameType,
    Hello,
    Send,
)
from wire.limits import MAX_FRAME_SIZE_BEFORE_AUTHENTICATION
from wire.protocol import MAX_HELD_FRAMES

__all__ = ["CORPUS", "REGRESSIONS", "corpus_inputs", "write_corpus"]

CORPUS = Path(__file__).parent / "corpus"
"""Where the seeds live, one directory per target: only what this module writes."""
REGRESSIONS = Path(__file__).parent / "regressions"
"""Inputs that once found a bug, one directory per target, added by hand and kept: the tests
run them with the seeds (docs/SECURITY.md, "Fuzzing")."""

_U32 = struct.Struct(">I")
USER_ID = "u-0123456789abcdef"
REQUESTS = [frame for frame_type, frame in sorted(SAMPLE_FRAMES.items()) if frame_type < 64]
AUTHENTICATED_REQUESTS = [frame for frame in REQUESTS if frame.frame_type not in (
    FrameType.ENROL_START, FrameType.ENROL_VERIFY, FrameType.HELLO, FrameType.AUTHENTICATE,
    FrameType.LINK_OPEN)]
HELLO = encode_frame(Hello(user_id=USER_ID, device_id=1))
AUTHENTICATE = encode_frame(Authenticate(signature=b"s" * 64))
SEND = encode_frame(Send(recipient_user_id=USER_ID, client_message_id=1, payloads={1: b"c"}))


def _framed(body: bytes) -> bytes:
    """``body`` behind its length prefix (for bodies the encoder would refuse to write)."""
    return _U32.pack(len(body)) + body


def _decoder_input(stream: bytes, *, cuts: tuple[int, ...] = (), small: bool = False) -> bytes:
    header = bytes([int(small), len(cuts)]) + b"".join(struct.pack(">H", cut) for cut in cuts)
    return header + stream


def _frame_decoder_inputs() -> dict[str, bytes]:
    inputs = {f"{frame_type.name.lower()}.bin": _decoder_input(encode_frame(frame))
              for frame_type, frame in sorted(SAMPLE_FRAMES.items())}
    every = b"".join(encode_frame(frame) for _, frame in sorted(SAMPLE_FRAMES.items()))
    inputs["every_frame_cut.bin"] = _decoder_input(every, cuts=(1, 3, 4, 5, 200, 999, 4000))
    inputs["truncated.bin"] = _decoder_input(HELLO[:-1])
    inputs["prefix_over_the_limit.bin"] = _decoder_input(_U32.pack(MAX_FRAME_SIZE + 1))
    inputs["large_before_authentication.bin"] = _decoder_input(
        _U32.pack(MAX_FRAME_SIZE_BEFORE_AUTHENTICATION + 1) + b"\x00" * 16, small=True)
    inputs["garbage_after_a_frame.bin"] = _decoder_input(HELLO + _U32.pack(1) + b"\xc1")
    return inputs


def _authenticated(steps: ServerSteps, *, connection: int = 0,
                   behind: bytes = b"") -> ServerSteps:
    """HELLO, CHALLENGE, AUTHENTICATE (with ``behind`` it, held), a good signature, CONFIRM."""
    return (steps.receive(0, HELLO, connection=connection)
            .challenge(connection=connection)
            .receive(0, AUTHENTICATE + behind, end_stream=True, connection=connection)
            .then(Step.AUTHENTICATE, connection=connection)
            .then(Step.CONFIRM, connection=connection))


def _server_protocol_inputs() -> dict[str, bytes]:
    inputs: dict[str, ServerSteps] = {}
    inputs["enrolment.bin"] = (
        ServerSteps().receive(0, encode_frame(SAMPLE_FRAMES[FrameType.ENROL_START]),
                              end_stream=True)
        .receive(4, encode_frame(SAMPLE_FRAMES[FrameType.ENROL_VERIFY]), end_stream=True))
    inputs["link_unauthenticated.bin"] = ServerSteps().receive(
        0, b"".join(encode_frame(SAMPLE_FRAMES[frame_type]) for frame_type in (
            FrameType.LINK_OPEN, FrameType.LINK_POST, FrameType.LINK_FETCH)), end_stream=True)
    session = _authenticated(ServerSteps(), behind=SEND)
    for index, frame in enumerate(AUTHENTICATED_REQUESTS):
        session.receive(STREAMS[1 + index % 3], encode_frame(frame), end_stream=True)
    inputs["authenticated_session.bin"] = session.then(Step.PROBE).then(Step.CLOSE)
    inputs["refused_authentication.bin"] = (
        ServerSteps().receive(0, HELLO).challenge().receive(0, AUTHENTICATE + SEND)
        .then(Step.AUTHENTICATE_BADLY).then(Step.PROBE))
    inputs["refused_unknown_device.bin"] = (
        ServerSteps().receive(0, HELLO).challenge().receive(0, AUTHENTICATE)
        .then(Step.REFUSE).receive(4, SEND))
    unauthenticated = ServerSteps()
    authenticated = _authenticated(ServerSteps())
    for _, frame in sorted(SAMPLE_FRAMES.items()):
        for steps in (unauthenticated, authenticated):
            steps.receive(4, encode_frame(frame)).reset(4)
    inputs["every_frame_unauthenticated.bin"] = unauthenticated
    inputs["every_frame_authenticated.bin"] = authenticated
    byte_by_byte = ServerSteps()
    for offset in range(len(HELLO)):
        byte_by_byte.receive(0, HELLO[offset:offset + 1])
    inputs["hello_byte_by_byte.bin"] = byte_by_byte.challenge().then(Step.PROBE)
    held = ServerSteps().receive(0, HELLO).challenge()
    held.receive(0, AUTHENTICATE + encode_frame(Ack(envelope_ids=(1,))) * (MAX_HELD_FRAMES + 2))
    inputs["held_frames_over_the_limit.bin"] = held.then(Step.AUTHENTICATE).then(Step.CONFIRM)
    incomplete = _U32.pack(MAX_FRAME_SIZE_BEFORE_AUTHENTICATION) + b"\x93"
    budget = ServerSteps(pool=2)
    for connection in (0, 1):
        for stream_id in (0, 4, 8, 12):
            budget.receive(stream_id, incomplete, connection=connection)
    inputs["incomplete_frames_over_the_pool.bin"] = budget.then(Step.CLOSE).then(
        Step.CLOSE, connection=1)
    big = _U32.pack(MAX_FRAME_SIZE) + b"\x93\x01\x06"
    inputs["large_frames_authenticated.bin"] = _authenticated(ServerSteps(pool=1)).receive(
        4, big).receive(8, big).receive(12, big).reset(4).then(Step.CLOSE)
    inputs["large_frame_before_authentication.bin"] = ServerSteps().receive(
        0, _U32.pack(MAX_FRAME_SIZE_BEFORE_AUTHENTICATION + 1))
    inputs["wrong_streams.bin"] = (
        ServerSteps().receive(2, HELLO).receive(3, HELLO).receive(1, HELLO, end_stream=True)
        .receive(6, HELLO).receive(0, HELLO[:LENGTH_PREFIX_SIZE + 2]).reset(0))
    inputs["garbage_frames.bin"] = (
        ServerSteps().receive(0, _U32.pack(1) + b"\xc1")
        .receive(4, HELLO[:-1], end_stream=True)
        .receive(8, _framed(msgpack.packb([1, 99, {}])))
        .receive(12, _framed(msgpack.packb([2, 3, {}]))))
    inputs["two_connections.bin"] = _authenticated(_authenticated(ServerSteps()), connection=1)
    return {name: steps.encode() for name, steps in inputs.items()}


def corpus_inputs() -> dict[str, dict[str, bytes]]:
    """Target name -> input file name -> bytes: the corpus as this code writes it."""
    return {"frame_decoder": _frame_decoder_inputs(),
            "server_protocol": _server_protocol_inputs()}


def write_corpus(root: Path = CORPUS) -> None:
    """Replace ``root``'s corpus with ``corpus_inputs()``."""
    for target, inputs in corpus_inputs().items():
        directory = root / target
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for name, data in inputs.items():
            (directory / name).write_bytes(data)


if __name__ == "__main__":
    write_corpus()
