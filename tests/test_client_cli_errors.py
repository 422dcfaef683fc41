"""The ``cryptopass`` command's first hour: every ordinary mistake, and a relay that is not
there, prints one line on stderr (``error: ...``, with what to do) and exits 1, never a
Python traceback (those come only with ``--debug``). Each command runs in a subprocess, as a
user runs it."""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from bench.spawn import spawn_relay
from client.cli import send_line
from client.messenger import SendReceipt, create_device_state
from client.profile import Profile
from crypto.link_code import encode_link_code
from enrolment.codes import MAX_CHECKS_PER_CODE
from tests.test_cli_scenario import BIN, free_udp_port, last_code, run

ALICE, BOB, UNDECLARED = "+33612345678", "+33698765432", "+33611111111"
LINK_CODE = encode_link_code(bytes(16), bytes(range(32)))
NO_RELAY_WAIT_S = 30
"""Bound on a command facing no relay: its handshake gives up after 10 s."""


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


async def cryptopass(*args: str, timeout: float = 30,
                     env: dict[str, str] | None = None) -> Result:
    with trio.fail_after(timeout):
        result = await trio.run_process([str(BIN / "cryptopass"), *args], capture_stdout=True,
                                        capture_stderr=True, check=False,
                                        env=None if env is None else {**os.environ, **env})
    return Result(result.returncode, result.stdout.decode(), result.stderr.decode())


def one_line_error(result: Result, *fragments: str) -> str:
    """The single ``error:`` line of a failed command, which must hold every fragment."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def enrolled_profile(directory: Path, relay: str) -> str:
    """A profile enrolled as far as the client can tell, for a relay at ``relay``."""
    profile = Profile(directory)
    profile.data.relay, profile.data.phone = relay, ALICE
    profile.data.user_id, profile.data.device_id = "0" * 32, 1
    profile.save()
    profile.signing_key(create=True)
    create_device_state(profile)
    return str(directory)


# -- no relay at the address ------------------------------------------------------------------


async def test_receive_with_no_relay_is_an_error_not_an_empty_inbox(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_udp_port()}"
    profile = enrolled_profile(tmp_path / "A", address)
    result = await cryptopass("--profile", profile, "receive", "--timeout", "2")
    one_line_error(result, f"cannot reach the relay at {address}", "within 2 s")
    assert result.stdout == ""


async def test_every_command_that_needs_the_relay_says_it_cannot_reach_it(
        tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_udp_port()}"

    def enrolled(name: str) -> str:
        # One profile per command: commands on one profile take turns (its lock), and each
        # here waits out its handshake, so they run side by side on profiles of their own.
        return enrolled_profile(tmp_path / name, address)

    half = Profile(tmp_path / "H")  # enrol went through once; verify is next
    half.data.relay, half.data.phone = address, ALICE
    half.save()
    half.signing_key(create=True)
    commands = {
        "enrol": ("--profile", str(tmp_path / "E"), "enrol", ALICE, "--relay", address),
        "verify": ("--profile", str(tmp_path / "H"), "verify", "123456"),
        "send": ("--profile", enrolled("S"), "send", BOB, "hello"),
        "receive": ("--profile", enrolled("R"), "receive"),
        "safety-number": ("--profile", enrolled("N"), "safety-number", BOB),
        "trust": ("--profile", enrolled("T"), "trust", BOB),
        "devices": ("--profile", enrolled("D"), "devices"),
        "devices approve": ("--profile", enrolled("AP"), "devices", "approve", LINK_CODE),
        "devices remove": ("--profile", enrolled("RM"), "devices", "remove", "2"),
        "link": ("--profile", str(tmp_path / "L"), "link", "--relay", address, "--no-qr"),
    }
    results: dict[str, Result] = {}

    async def one(name: str, args: tuple[str, ...]) -> None:
        results[name] = await cryptopass(*args, timeout=NO_RELAY_WAIT_S)

    async with trio.open_nursery() as nursery:  # each waits out its handshake: side by side
        for name, args in commands.items():
            nursery.start_soon(one, name, args)
    for name in commands:
        one_line_error(results[name], f"cannot reach the relay at {address}")
        assert results[name].stdout == "", name


# -- ordinary mistakes, before any relay is contacted ---------------------------------------


@pytest.mark.parametrize(("args", "fragments"), [
    (("enrol", "0612345678"), ("invalid phone number '0612345678'", "+ and the country code",
                               "e.g. +33612345678")),
    (("enrol", ALICE, "--ca", "{tmp}/missing.pem"),
     ("no such file: {tmp}/missing.pem", "pass the relay's certificate with --ca")),
    (("enrol", ALICE, "--ca", "{tmp}/not-a-cert.pem"),
     ("not a PEM certificate: {tmp}/not-a-cert.pem", "--ca")),
    (("enrol", ALICE, "--relay", "localhost"),
     ("invalid relay address 'localhost'", "expected HOST:PORT")),
    (("enrol", ALICE, "--relay", "127.0.0.1:99999"), ("expected HOST:PORT",)),
    (("send", BOB, "hello"),
     ("is not enrolled", "cryptopass --profile {tmp}/P enrol +NUMBER --relay HOST:PORT --ca CERT")),
    (("receive", "--timeout", "1"), ("is not enrolled", "cryptopass --profile {tmp}/P enrol")),
    (("devices",), ("is not enrolled", "cryptopass --profile {tmp}/P enrol")),
    (("safety-number", BOB), ("is not enrolled", "cryptopass --profile {tmp}/P enrol")),
    (("trust", BOB), ("is not enrolled", "cryptopass --profile {tmp}/P enrol")),
    (("verify", "123456"),
     ("no enrolment in progress", "cryptopass --profile {tmp}/P enrol +NUMBER")),
], ids=["national-number", "missing-ca", "not-a-certificate", "no-port", "port-out-of-range",
        "send-unenrolled", "receive-unenrolled", "devices-unenrolled",
        "safety-number-unenrolled", "trust-unenrolled", "verify-before-enrol"])
async def test_an_ordinary_mistake_prints_one_line_and_no_traceback(
        tmp_path: Path, args: tuple[str, ...], fragments: tuple[str, ...]) -> None:
    (tmp_path / "not-a-cert.pem").write_text("hello\n")
    tmp = str(tmp_path)
    result = await cryptopass("--profile", f"{tmp}/P",
                              *(arg.replace("{tmp}", tmp) for arg in args))
    one_line_error(result, *(fragment.replace("{tmp}", tmp) for fragment in fragments))


async def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = await cryptopass("--debug", "--profile", str(tmp_path / "P"), "devices")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ProfileError" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: the profile")


# -- against a relay: certificates and enrolment wording ------------------------------------


async def test_enrolment_says_what_it_knows_and_what_to_do_next(tmp_path: Path) -> None:
    data = tmp_path / "D"
    await run("cryptopass-relay", "admin", "--data-dir", str(data), "org", "create", "acme",
              "--seats", "10")
    await run("cryptopass-relay", "admin", "--data-dir", str(data), "user", "add", "--org",
              "acme", ALICE)
    async with spawn_relay(data) as relay:
        address = f"127.0.0.1:{relay.port}"
        cert = str(data / "tls" / "cert.pem")
        profile = str(tmp_path / "A")

        # No --ca: the relay's self-signed certificate is refused, and the line says why.
        no_ca = await cryptopass("--profile", profile, "enrol", ALICE, "--relay", address)
        one_line_error(no_ca, "certificate is not trusted", "pass the relay's certificate "
                       "with --ca")

        # The relay does not say whether a number is declared: neither may the client.
        undeclared = await cryptopass("--profile", str(tmp_path / "U"), "enrol", UNDECLARED,
                                      "--relay", address, "--ca", cert)
        assert undeclared.returncode == 0, undeclared.stderr
        assert undeclared.stdout.startswith(f"If {UNDECLARED} is declared by an organisation, "
                                            f"a code was sent to it by SMS."), undeclared.stdout

        enrolled = await cryptopass("--profile", profile, "enrol", ALICE, "--relay", address,
                                    "--ca", cert)
        assert enrolled.returncode == 0, enrolled.stderr
        await relay.wait_for("sms_sent", 1)
        code = last_code(relay.outbox, ALICE)
        wrong = "000000" if code != "000000" else "111111"
        enrol_again = shlex.join(["cryptopass", "--profile", profile, "enrol", ALICE,
                                  "--relay", address, "--ca", str(Path(cert).resolve())])
        for _ in range(MAX_CHECKS_PER_CODE):
            refused = await cryptopass("--profile", profile, "verify", wrong)
            one_line_error(refused, "error: the relay refused: VERIFICATION_FAILED",
                           "request a new code", f"run `{enrol_again}` again")
        # The attempts are used up: even the right code is refused, with the same way out.
        exhausted = await cryptopass("--profile", profile, "verify", code)
        one_line_error(exhausted, "no attempts left", f"run `{enrol_again}` again")

        again = await cryptopass(*shlex.split(enrol_again)[1:])  # the line, pasted
        assert again.returncode == 0, again.stderr
        await relay.wait_for("sms_sent", 2)
        verified = await cryptopass("--profile", profile, "verify",
                                    last_code(relay.outbox, ALICE))
        assert verified.returncode == 0, verified.stderr


# -- help ------------------------------------------------------------------------------------

COMMANDS = ("enrol", "verify", "send", "receive", "safety-number", "trust", "devices")


async def test_the_help_describes_every_argument_and_shows_defaults() -> None:
    pages = {name: await cryptopass(*([name] if name else []), "--help",
                                    env={"COLUMNS": "160"})
             for name in ("", *COMMANDS)}
    for name, page in pages.items():
        assert page.returncode == 0, (name, page.stderr)
        text = " ".join(page.stdout.split())
        assert not re.search(r"\w \.", text), (name, text)  # a default eaten as markup
    main_page = " ".join(pages[""].stdout.split())
    assert "[default: cryptopass-profile]" in main_page and "--debug" in main_page
    for name in COMMANDS:  # each command's summary fits its one row of the command list
        row = next(line for line in pages[""].stdout.splitlines() if f" {name} " in line)
        assert row.rstrip(" │").endswith("."), row
    enrol_page = " ".join(pages["enrol"].stdout.split())
    assert "[default: 127.0.0.1:4433]" in enrol_page
    assert "e.g. cryptopass-data/tls/cert.pem" in enrol_page
    assert "This device's phone number in international form" in enrol_page
    assert "[default: no-follow]" in " ".join(pages["receive"].stdout.split())
    assert "default: no limit" in " ".join(pages["receive"].stdout.split())
    for name in ("send", "safety-number", "trust"):
        assert "The contact's phone number in international form" in " ".join(
            pages[name].stdout.split()), name


def test_the_send_line_is_documented_json() -> None:
    # What `send` prints is a contract for scripts: its keys stay these.
    line = send_line(BOB, SendReceipt(message_id=7, recipient_devices=(1, 2), own_devices=(3,),
                                      mismatch_retries=0))
    assert json.loads(json.dumps(line)) == {"sent": True, "to": BOB, "message_id": 7,
                                            "devices": 2, "copies": 1, "sealed": False}
