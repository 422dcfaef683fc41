"""Failover across several relay addresses (issue 23): a client given ``H1:P1,H2:P2`` uses the
first that completes the QUIC handshake, so a device reaches the other node of a cluster when
its own stopped. Real QUIC on loopback: the dead address is a free UDP port where nothing
listens (its handshake goes unanswered), the live one a relay under test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from client.account_setup import verify_enrolment
from client.connection import (
    HandshakeFailed,
    NoRelayReached,
    RelayClient,
    RelayUnreachable,
    connect_any,
)
from client.messenger import Messenger
from client.profile import Profile
from relay.server import RunningRelay, serve
from relay.settings import RelaySettings
from tests.conftest import RelayUnderTest
from tests.test_cli_scenario import free_udp_port
from tests.test_client_cli_errors import cryptopass, one_line_error
from tests.test_client_cli_errors import enrolled_profile as enrolled_cli_profile
from transport.addresses import RelayAddressError, parse_host_port, parse_relay_list

ALICE, BOB = "+33612345678", "+33698765432"
DEAD_WAIT_S = 0.3
"""Handshake timeout for the dead address: short, since nothing will ever answer there."""
BOUND_S = 30
"""Bound on anything that could hang; not a timing assertion."""


def dead_address() -> tuple[str, int]:
    return "127.0.0.1", free_udp_port()


def live_address(relay: RelayUnderTest) -> tuple[str, int]:
    return "127.0.0.1", relay.port


def relay_text(*addresses: tuple[str, int]) -> str:
    return ",".join(f"{host}:{port}" for host, port in addresses)


def sole(error: BaseException) -> BaseException:
    """The one exception inside the nurseries' single-member groups (as `connect_relay`
    raises it)."""
    while isinstance(error, BaseExceptionGroup):
        [error] = error.exceptions
    return error


async def enrol_code_sent(relay: RelayUnderTest, client: RelayClient, phone: str) -> str:
    """Ask for an enrolment code through ``client``; the code ``relay`` sent by SMS."""
    already = len(relay.sms.messages)
    await client.enrol_start(phone)
    while len(relay.sms.messages) == already:
        await relay.sms.arrived.wait()
    return await relay.sms.code_for(phone)


# -- the address list ------------------------------------------------------------------------


def test_the_list_keeps_the_order_given() -> None:
    assert parse_relay_list("10.0.0.2:4433, relay-a.example:4434,[::1]:4435") == [
        ("10.0.0.2", 4433), ("relay-a.example", 4434), ("::1", 4435)]


def test_one_address_is_parsed_and_refused_as_before() -> None:
    assert parse_relay_list("127.0.0.1:4433") == [parse_host_port("127.0.0.1:4433")]
    for bad in ("localhost", "127.0.0.1:99999", ":4433"):
        with pytest.raises(ValueError) as expected:
            parse_host_port(bad)
        with pytest.raises(RelayAddressError) as refused:
            parse_relay_list(bad)
        assert str(refused.value) == str(expected.value)
        assert refused.value.entry == bad


@pytest.mark.parametrize(("text", "entry", "fragment"), [
    ("127.0.0.1:4433,localhost", "localhost", "expected HOST:PORT, got 'localhost' (entry 2"),
    ("127.0.0.1:4433,", "", "empty relay address (entry 2"),
    (",127.0.0.1:4433", "", "empty relay address (entry 1"),
    ("a:1,,b:2", "", "empty relay address (entry 2"),
    ("a:1,b:70000", "b:70000", "port 70000 is out of range"),
    ("a:1,b:2,a:1", "a:1", "'a:1' is listed twice"),
])
def test_a_bad_entry_is_named(text: str, entry: str, fragment: str) -> None:
    with pytest.raises(RelayAddressError) as refused:
        parse_relay_list(text)
    assert refused.value.entry == entry and refused.value.text == text
    assert fragment in str(refused.value)


@given(st.lists(st.tuples(st.sampled_from(["127.0.0.1", "relay.example", "::1"]),
                          st.integers(0, 65535)), min_size=1, max_size=5, unique=True))
def test_any_list_of_addresses_reads_back(addresses: list[tuple[str, int]]) -> None:
    text = ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                    for host, port in addresses)
    assert parse_relay_list(text) == addresses


# -- connecting ---------------------------------------------------------------------------------


async def test_a_dead_first_address_is_passed_over_for_the_next(relay: RelayUnderTest) -> None:
    with trio.fail_after(BOUND_S):
        async with connect_any([dead_address(), live_address(relay)],
                               ca=relay.running.cert_path,
                               connect_timeout=DEAD_WAIT_S) as client:
            code = await enrol_code_sent(relay, client, ALICE)
    assert code.isdigit()


async def test_the_first_answering_address_is_used_and_the_rest_left_alone(
        relay: RelayUnderTest) -> None:
    # The dead address comes second with a handshake timeout far beyond the bound: had it been
    # tried first, or at all, the bound would fail the test.
    with trio.fail_after(5):
        async with connect_any([live_address(relay), dead_address()],
                               ca=relay.running.cert_path, connect_timeout=60) as client:
            await enrol_code_sent(relay, client, ALICE)


@pytest.fixture
async def untrusted_relay(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[RunningRelay]:
    """A second relay with a certificate of its own, which the first's CA file does not
    trust: its handshake is refused, not unanswered."""
    settings = RelaySettings(data_dir=tmp_path / "other-relay", listen_port=0)
    settings.data_dir.mkdir(parents=True)
    running: RunningRelay = await nursery.start(
        lambda task_status: serve(settings, task_status=task_status))
    yield running
    running.stop()


async def test_a_refused_handshake_is_passed_over_for_the_next(
        relay: RelayUnderTest, untrusted_relay: RunningRelay) -> None:
    refusing = ("127.0.0.1", untrusted_relay.address[1])
    with trio.fail_after(BOUND_S):
        async with connect_any([refusing, live_address(relay)], ca=relay.running.cert_path,
                               connect_timeout=60) as client:
            await enrol_code_sent(relay, client, ALICE)
        with pytest.raises(BaseExceptionGroup) as alone:
            async with connect_any([refusing], ca=relay.running.cert_path):
                pass
    refusal = sole(alone.value)
    assert isinstance(refusal, HandshakeFailed) and refusal.certificate_refused


async def test_every_address_down_is_one_error_naming_each(
        relay: RelayUnderTest, untrusted_relay: RunningRelay) -> None:
    dead = dead_address()
    refusing = ("127.0.0.1", untrusted_relay.address[1])
    with trio.fail_after(BOUND_S), pytest.raises(NoRelayReached) as failed:
        async with connect_any([dead, refusing], ca=relay.running.cert_path,
                               connect_timeout=DEAD_WAIT_S):
            pytest.fail("connected to no relay")
    error = failed.value
    assert [(host, port) for host, port, _ in error.failures] == [dead, refusing]
    assert isinstance(error.failures[0][2], RelayUnreachable)
    assert isinstance(error.failures[1][2], HandshakeFailed)
    assert error.failures[1][2].certificate_refused
    message = str(error)
    assert message.startswith("no relay answered: ")
    assert f"127.0.0.1:{dead[1]}: no answer within {DEAD_WAIT_S:g} s" in message
    assert f"127.0.0.1:{refusing[1]}: handshake refused (TLS alert" in message
    assert len(relay.sms.messages) == 0


async def test_one_address_fails_as_connect_relay_does() -> None:
    dead = dead_address()
    with trio.fail_after(BOUND_S), pytest.raises(BaseExceptionGroup) as failed:
        async with connect_any([dead], ca=None, connect_timeout=DEAD_WAIT_S):
            pytest.fail("connected to no relay")
    unreachable = sole(failed.value)
    assert isinstance(unreachable, RelayUnreachable)
    assert (unreachable.host, unreachable.port) == dead
    assert str(unreachable).endswith(f"no answer from 127.0.0.1:{dead[1]} within "
                                     f"{DEAD_WAIT_S:g} s")


async def test_no_address_is_a_mistake() -> None:
    with pytest.raises(ValueError, match="no relay address"):
        async with connect_any([], ca=None):
            pass


# -- a profile with several addresses ----------------------------------------------------------


async def test_enrol_verify_and_send_go_through_the_second_address(
        relay: RelayUnderTest, tmp_path: Path) -> None:
    relays = relay_text(dead_address(), live_address(relay))
    ca = relay.running.cert_path
    profiles = {}
    with trio.fail_after(BOUND_S):
        for name, phone in (("alice", ALICE), ("bob", BOB)):
            profile = Profile(tmp_path / name)
            profile.signing_key(create=True)
            profile.data.relay, profile.data.ca, profile.data.phone = relays, str(ca), phone
            profile.save()
            async with connect_any(parse_relay_list(relays), ca=ca,
                                   connect_timeout=DEAD_WAIT_S) as client:
                code = await enrol_code_sent(relay, client, phone)
            await verify_enrolment(profile, code, connect_timeout=DEAD_WAIT_S)
            assert Profile(tmp_path / name).data.relay == relays  # kept as given
            profiles[name] = profile
        async with Messenger.connect(profiles["alice"],
                                     connect_timeout=DEAD_WAIT_S) as messenger:
            receipt = await messenger.send_text(BOB, "through the other node")
        assert receipt.recipient_devices
        async with Messenger.connect(profiles["bob"], connect_timeout=DEAD_WAIT_S) as messenger, \
                aclosing(messenger.messages(stop_when_empty=True)) as messages:
            texts = [message.content.text async for message in messages
                     if message.content is not None]
    assert texts == ["through the other node"]


# -- the command line ----------------------------------------------------------------------------


async def test_the_cli_names_a_bad_entry_of_the_list(tmp_path: Path) -> None:
    result = await cryptopass("--profile", str(tmp_path / "P"), "enrol", ALICE,
                              "--relay", "127.0.0.1:4433,localhost")
    one_line_error(result, "invalid relay address list", "got 'localhost' (entry 2 of the list "
                   "'127.0.0.1:4433,localhost')", "separated by commas")


async def test_the_cli_says_no_relay_of_the_list_answered(tmp_path: Path) -> None:
    relays = relay_text(dead_address(), dead_address())
    profile = enrolled_cli_profile(tmp_path / "A", relays)
    result = await cryptopass("--profile", profile, "receive", "--timeout", "1")
    one_line_error(result, f"cannot reach any relay of {relays}: no answer within 1 s")
