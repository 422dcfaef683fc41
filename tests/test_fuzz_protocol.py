"""Fuzzing the wire protocol with hypothesis: the frame decoder and both connection state
machines, fed what a hostile peer could send, and the coverage-guided harness (fuzz/) run on
its corpus so that it cannot rot.

The properties (fuzz/checks.py, shared with the atheris targets): only protocol errors escape;
a call that raises one leaves the machine exactly as it was; a failed stream is ignored and
changes nothing; the budgets hold after every step and a closed connection holds nothing; no
request that needs a proven device reaches the shell before it confirmed one.
"""

from __future__ import annotations

import gc
import struct
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from fuzz import run
from fuzz.checks import (
    UNAUTHENTICATED_REQUESTS,
    ClientDriver,
    FuzzFinding,
    ServerDriver,
    check_frame_stream,
    snapshot,
    unchanged_on_protocol_error,
)
from fuzz.make_corpus import CORPUS, REGRESSIONS, corpus_inputs
from fuzz.targets import POOL_LIMITS, STREAMS, TARGETS
from tests.test_frames import SAMPLE_FRAMES
from wire.buffers import BufferPool
from wire.codec import decode_body, encode_frame
from wire.errors import LocalProtocolError
from wire.frames import (
    LENGTH_PREFIX_SIZE,
    MAX_FRAME_SIZE,
    NONCE_SIZE,
    Authenticate,
    ErrorCode,
    Frame,
    FrameType,
    Hello,
)
from wire.limits import MAX_FRAME_SIZE_BEFORE_AUTHENTICATION
from wire.protocol import ConnectionState, ServerProtocol

FUZZ = settings(max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
"""Moderate: the suite runs on two cores."""

SAMPLES: list[Frame] = [frame for _, frame in sorted(SAMPLE_FRAMES.items())]
ENCODED = [encode_frame(frame) for frame in SAMPLES]
HELLO = encode_frame(Hello(user_id="u-0123456789abcdef", device_id=1))
AUTHENTICATE = encode_frame(Authenticate(signature=b"s" * 64))
_U32 = struct.Struct(">I")
T = TypeVar("T", str, bytes)


def prefixed(body: bytes) -> bytes:
    return _U32.pack(len(body)) + body


# --- Strategies -----------------------------------------------------------------------------------
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=40),
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=12) | st.integers(-1, 300), children,
                                        max_size=4)),
    max_leaves=12)
"""Anything msgpack encodes (no extension types: the decoder refuses them outright)."""

EDGE_INTS = (0, 1, -1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1, -(2**63))


def mutate(draw: st.DrawFn, value: Any, depth: int = 0) -> Any:
    """One change to a decoded body or a value inside it: the shape a structure-aware fuzzer
    makes (a field replaced, removed, added, grown, or of another type)."""
    if isinstance(value, dict) and value and depth < 4:
        key = draw(st.sampled_from(sorted(value, key=repr)))
        changed = dict(value)
        match draw(st.integers(0, 3)):
            case 0:
                changed[key] = draw(msgpack_values)
            case 1:
                del changed[key]
            case 2:
                changed[key] = mutate(draw, value[key], depth + 1)
            case _:
                changed[draw(st.text(max_size=12))] = draw(msgpack_values)
        return changed
    if isinstance(value, list) and value and depth < 4:
        index = draw(st.integers(0, len(value) - 1))
        changed_list = list(value)
        match draw(st.integers(0, 3)):
            case 0:
                changed_list[index] = draw(msgpack_values)
            case 1:
                del changed_list[index]
            case 2:
                changed_list[index] = mutate(draw, value[index], depth + 1)
            case _:
                changed_list += [value[index]] * draw(st.sampled_from([1, 64, 1100]))
        return changed_list
    if isinstance(value, bool):
        return draw(st.sampled_from([not value, 0, 1, None]))
    if isinstance(value, int):
        return draw(st.sampled_from([*EDGE_INTS, value + 1, value - 1]))
    if isinstance(value, str):
        return draw(st.sampled_from(_resized(value)) | st.text(max_size=30))
    if isinstance(value, bytes):
        return draw(st.sampled_from(_resized(value)) | st.binary(max_size=40))
    return draw(msgpack_values)


def _resized(value: T) -> list[T]:
    """``value`` emptied, shortened, doubled, made huge (a str or bytes)."""
    sequence: Any = value
    return [sequence[:0], sequence[:-1], sequence * 2, sequence * 5000, sequence + sequence[:1]]


@st.composite
def mutated_frames(draw: st.DrawFn) -> object:
    """A valid frame of any type, decoded to its msgpack structure, then changed 1-3 times (and
    sometimes sent under another frame type or version)."""
    sample = draw(st.sampled_from(SAMPLES))
    structure = msgpack.unpackb(encode_frame(sample)[LENGTH_PREFIX_SIZE:], raw=False,
                                strict_map_key=False)
    for _ in range(draw(st.integers(1, 3))):
        structure = mutate(draw, structure)
    if isinstance(structure, list) and len(structure) == 3 and draw(st.booleans()):
        structure[draw(st.integers(0, 1))] = draw(
            st.sampled_from(FrameType) | st.integers(-1, 300))
    return structure


whole_frames = st.sampled_from(ENCODED)
requests = st.sampled_from([encode_frame(frame) for frame in SAMPLES if frame.frame_type < 64])
fragments = st.one_of(
    whole_frames,
    requests,
    st.tuples(whole_frames, st.integers(0, 5000), st.integers(0, 5000)).map(
        lambda cut: cut[0][min(cut[1], cut[2]):max(cut[1], cut[2])]),
    st.binary(max_size=24),
    st.sampled_from([_U32.pack(size) for size in (
        1000, 8000, MAX_FRAME_SIZE_BEFORE_AUTHENTICATION, MAX_FRAME_SIZE_BEFORE_AUTHENTICATION + 1,
        MAX_FRAME_SIZE, MAX_FRAME_SIZE + 1)] + [prefixed(b"\xc1")]),
    st.sampled_from([_U32.pack(size) for size in (
        1000, 8000, MAX_FRAME_SIZE_BEFORE_AUTHENTICATION, MAX_FRAME_SIZE_BEFORE_AUTHENTICATION + 1,
        MAX_FRAME_SIZE, MAX_FRAME_SIZE + 1)] + [prefixed(b"\xc1")]),
)
"""Pieces of a stream: whole valid frames of every type (requests more often), slices of them,
garbage, and length prefixes of frames to come, up to and over the limits (each counted
against the budgets)."""
stream_bytes = st.lists(fragments, min_size=1, max_size=4).map(b"".join)
cuts = st.lists(st.integers(0, 2**16), max_size=6)


# --- The frame decoder ----------------------------------------------------------------------------
@FUZZ
@given(data=st.binary(max_size=300))
def test_any_bytes_as_a_frame_body_raise_only_protocol_errors(data: bytes) -> None:
    unchanged_on_protocol_error(None, lambda: decode_body(data), "decode_body")


@FUZZ
@given(structure=msgpack_values | st.lists(msgpack_values, min_size=3, max_size=3),
       chunking=cuts)
def test_any_msgpack_structure_raises_only_protocol_errors(structure: object,
                                                           chunking: list[int]) -> None:
    check_frame_stream(prefixed(msgpack.packb(structure)), chunking)


@FUZZ
@given(structure=mutated_frames(), chunking=cuts,
       limit=st.sampled_from([MAX_FRAME_SIZE, MAX_FRAME_SIZE_BEFORE_AUTHENTICATION]))
def test_valid_frames_changed_anywhere_raise_only_protocol_errors(
        structure: object, chunking: list[int], limit: int) -> None:
    frames = check_frame_stream(prefixed(msgpack.packb(structure)), chunking,
                                max_frame_size=limit)
    note(f"decoded: {frames!r}")


@FUZZ
@given(frames=st.lists(st.sampled_from(SAMPLES), min_size=1, max_size=6), tail=stream_bytes,
       chunking=cuts, flips=st.lists(st.tuples(st.integers(0, 2**20), st.integers(1, 255)),
                                     max_size=3))
def test_streams_of_valid_frames_with_garbage_and_flipped_bytes(
        frames: list[Frame], tail: bytes, chunking: list[int],
        flips: list[tuple[int, int]]) -> None:
    valid = b"".join(encode_frame(frame) for frame in frames)
    if not flips:  # the valid frames come out whatever follows them and however it is cut
        assert check_frame_stream(valid + tail, chunking)[:len(frames)] == frames
    stream = bytearray(valid + tail)
    for position, mask in flips:
        stream[position % len(stream)] ^= mask
    check_frame_stream(bytes(stream), chunking)


# --- The relay's state machine --------------------------------------------------------------------
PRELUDES = ("new", "challenged", "authenticating", "authenticated", "closed")
"""Where a connection starts before the random steps, so that every state gets its share."""


def drive_to(driver: ServerDriver, connection: int, prelude: str) -> None:
    if prelude == "new":
        return
    driver.receive(connection, 0, HELLO, end_stream=False)
    driver.challenge(connection, b"n" * NONCE_SIZE)
    if prelude == "challenged":
        return
    driver.receive(connection, 0, AUTHENTICATE, end_stream=False)
    if prelude == "authenticating":
        return
    driver.authenticate(connection, valid=prelude == "authenticated")
    if prelude == "authenticated":
        driver.confirm(connection)


connections = st.integers(0, 1)
streams = st.sampled_from(STREAMS[:4]) | st.sampled_from(STREAMS)  # requests' streams first
server_steps = st.one_of(
    st.tuples(st.just("receive"), connections, streams, stream_bytes, st.booleans()),
    st.tuples(st.just("receive"), connections, streams, stream_bytes, st.booleans()),
    st.tuples(st.just("reset"), connections, streams),
    st.tuples(st.just("challenge"), connections,
              st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE) | st.binary(max_size=40)),
    st.tuples(st.just("authenticate"), connections, st.booleans()),
    st.tuples(st.sampled_from(["confirm", "refuse", "close", "probe"]), connections),
)


def run_server_step(driver: ServerDriver, step: tuple[Any, ...]) -> None:
    match step:
        case ("receive", connection, stream_id, data, end_stream):
            driver.receive(connection, stream_id, data, end_stream)
        case ("reset", connection, stream_id):
            driver.reset(connection, stream_id)
        case ("challenge", connection, nonce):
            driver.challenge(connection, nonce)
        case ("authenticate", connection, valid):
            driver.authenticate(connection, valid=valid)
        case ("confirm", connection):
            driver.confirm(connection)
        case ("refuse", connection):
            driver.refuse(connection)
        case ("close", connection):
            driver.close(connection)
        case ("probe", connection):
            driver.probe(connection)
        case _:
            raise AssertionError(step)


@FUZZ
@given(preludes=st.tuples(st.sampled_from(PRELUDES), st.sampled_from(PRELUDES)),
       pool_limit=st.sampled_from(POOL_LIMITS),
       steps=st.lists(server_steps, min_size=4, max_size=30))
def test_the_relay_state_machine_under_arbitrary_streams_and_calls(
        preludes: tuple[str, str], pool_limit: int | None,
        steps: list[tuple[Any, ...]]) -> None:
    pool = BufferPool() if pool_limit is None else BufferPool(
        limit=pool_limit, unauthenticated_limit=pool_limit // 2)
    driver = ServerDriver(pool=pool)
    for connection, prelude in enumerate(preludes):
        drive_to(driver, connection, prelude)
    for step in steps:
        run_server_step(driver, step)
    for connection in (0, 1):
        driver.close(connection)
    assert pool.used == pool.used_unauthenticated == 0  # a closed connection gives all back


# --- The client's state machine -------------------------------------------------------------------
client_steps = st.one_of(
    st.tuples(st.just("receive"), st.sampled_from((0, 4, 8, 3, 7, 11, 1, 2)), stream_bytes,
              st.booleans()),
    st.tuples(st.just("reset"), st.sampled_from((0, 4, 3, 7, 2))),
)


@FUZZ
@given(steps=st.lists(client_steps, max_size=30))
def test_the_client_state_machine_under_arbitrary_streams(steps: list[tuple[Any, ...]]) -> None:
    driver = ClientDriver()
    for step in steps:
        match step:
            case ("receive", stream_id, data, end_stream):
                driver.receive(stream_id, data, end_stream)
            case ("reset", stream_id):
                driver.reset(stream_id)
            case _:
                raise AssertionError(step)


# --- The checks themselves: they must be able to fail ---------------------------------------------
class _Machine:
    def __init__(self) -> None:
        self._hidden = [1]


def test_a_machine_changed_by_a_call_that_raises_is_a_finding() -> None:
    machine = _Machine()

    def change_then_refuse() -> None:
        machine._hidden.append(2)  # private state: the snapshot sees it too
        raise LocalProtocolError(ErrorCode.UNEXPECTED_FRAME, "refused")

    with pytest.raises(FuzzFinding, match="changed the state"):
        unchanged_on_protocol_error(machine, change_then_refuse, "call")
    assert unchanged_on_protocol_error(machine, lambda: 7, "call") == 7


def test_an_exception_other_than_a_protocol_error_escapes_the_checks() -> None:
    def broken() -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        unchanged_on_protocol_error(_Machine(), broken, "call")


def test_the_snapshot_of_a_connection_sees_what_it_buffers() -> None:
    core = ServerProtocol()
    before = snapshot(core)
    assert core.receive_stream_data(0, HELLO[:5], False) == []
    assert snapshot(core) != before


def test_a_request_before_authentication_is_a_finding() -> None:
    driver = ServerDriver()
    needs_a_device = next(frame for frame in SAMPLES if frame.frame_type < 64
                          and frame.frame_type not in UNAUTHENTICATED_REQUESTS)
    with pytest.raises(FuzzFinding, match="reached the shell in state NEW"):
        driver._check_request(needs_a_device, ConnectionState.NEW)


# --- The coverage-guided harness: its corpus and targets ------------------------------------------
def _corpus_files() -> list[tuple[str, Path]]:
    """Every seed, and every input that once found a bug (kept in fuzz/regressions/TARGET)."""
    return [(target, path) for target in sorted(TARGETS)
            for directory in (CORPUS / target, REGRESSIONS / target) if directory.is_dir()
            for path in sorted(directory.iterdir())]


def test_the_checked_in_corpus_is_what_make_corpus_writes() -> None:
    written = {target: {path.name: path.read_bytes() for path in (CORPUS / target).iterdir()}
               for target in TARGETS}
    assert written == corpus_inputs(), (
        "the corpus is out of date: run `python -m fuzz.make_corpus` and commit fuzz/corpus")


@pytest.mark.parametrize(("target", "path"), _corpus_files(),
                         ids=[f"{target}/{path.name}" for target, path in _corpus_files()])
def test_every_corpus_input_passes_its_target(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())


def test_the_server_corpus_reaches_every_state_request_and_refusal() -> None:
    drivers: list[ServerDriver] = []
    original: Callable[..., None] = ServerDriver.__init__

    def recording(self: ServerDriver, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        drivers.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ServerDriver, "__init__", recording)
        for path in sorted((CORPUS / "server_protocol").iterdir()):
            TARGETS["server_protocol"](path.read_bytes())
    states = set().union(*(driver.states_seen for driver in drivers))
    events = set().union(*(driver.events_seen for driver in drivers))
    assert states == set(ConnectionState)
    requests = {frame_type.name for frame_type in FrameType
                if frame_type < 64 and frame_type is not FrameType.HELLO}
    assert {"AuthenticationRequested"} | {f"RequestReceived:{name}" for name in requests} <= events
    assert {f"StreamFailed:{code.name}" for code in (
        ErrorCode.MALFORMED_FRAME, ErrorCode.FRAME_TOO_LARGE, ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.UNKNOWN_FRAME_TYPE, ErrorCode.UNEXPECTED_FRAME, ErrorCode.TRUNCATED_FRAME,
        ErrorCode.RATE_LIMITED)} <= events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=st.sampled_from(sorted(TARGETS)), data=st.data())
def test_the_targets_take_any_input_and_any_corpus_input_changed(
        target: str, data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(sorted((CORPUS / target).iterdir())) | st.none())
    given_input = bytearray(seed.read_bytes() if seed is not None
                            else data.draw(st.binary(max_size=200)))
    for position, mask in data.draw(st.lists(st.tuples(st.integers(0, 2**20),
                                                       st.integers(1, 255)), max_size=4)):
        if given_input:
            given_input[position % len(given_input)] ^= mask
    TARGETS[target](bytes(given_input))


def test_the_runner_says_how_to_get_atheris(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "atheris", None)  # as if it were not installed
    with pytest.raises(SystemExit) as exit_:
        run.main(["fuzz.run", "frame_decoder"])
    assert "pip install atheris" in str(exit_.value.code)


# --- A finding of this fuzzing, kept as a regression test ------------------------------------------
# A StreamFailed held while authenticating kept its error's traceback, whose frames kept the
# stream's bytes alive after the budget released them (fixed in wire/protocol.py, wire/codec.py
# for a frame cut short). A frame that fails to decode keeps them through the error's context
# (the msgpack or field error it replaced, and that error's traceback).
FRAME_SIZE = 1024 * 1024


def _cut_short(stream_id: int) -> list[tuple[bytes, bool]]:
    return [(_U32.pack(FRAME_SIZE) + bytes(FRAME_SIZE - 1), False), (b"", True)]


def _undecodable(stream_id: int) -> list[tuple[bytes, bool]]:
    return [(_U32.pack(FRAME_SIZE) + b"\xc1" * FRAME_SIZE, False)]  # 0xc1: never msgpack


def _payload_too_large(stream_id: int) -> list[tuple[bytes, bool]]:
    body = msgpack.packb([1, FrameType.SEND, {"recipient_user_id": "u", "client_message_id": 1,
                                              "payloads": {1: bytes(FRAME_SIZE)}}])
    return [(prefixed(body), False)]


HELD_FAILURES = [
    pytest.param(_cut_short, id="cut-short"),
    pytest.param(_undecodable, id="undecodable"),
    pytest.param(_payload_too_large, id="payload-too-large"),
]


@pytest.mark.parametrize("failure", HELD_FAILURES)
def test_failed_streams_held_while_authenticating_keep_none_of_their_bytes(
        failure: Callable[[int], list[tuple[bytes, bool]]]) -> None:
    pool = BufferPool()
    core = ServerProtocol(buffers=pool)
    core.receive_stream_data(0, HELLO, False)
    core.issue_challenge(b"n" * NONCE_SIZE)
    core.receive_stream_data(0, AUTHENTICATE, False)
    assert core.state is ConnectionState.AUTHENTICATING
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for stream_id in range(4, 4 * 17, 4):  # 16 streams, each failing with 1 MiB: held
            for data, end_stream in failure(stream_id):
                assert core.receive_stream_data(stream_id, data, end_stream) == []
        del data
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert core.held_frames == 0 and core.state is ConnectionState.AUTHENTICATING
    assert core.buffered_bytes == pool.used == 0  # the budget counts nothing any more...
    assert kept < FRAME_SIZE  # ...so nothing of those 16 MiB may be kept
