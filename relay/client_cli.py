"""``cryptopass``: the reference client on the command line.

Until end-to-end encryption lands, the message content (sender phone, text,
time) travels as plain msgpack inside the envelope; the relay already treats
it as opaque bytes and never parses it.
"""

from __future__ import annotations

import datetime
import json
import secrets
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import msgpack
import trio
import typer

from enrolment.phone import InvalidPhoneNumber, parse_phone
from relay.client import ConnectionClosed, RelayClient, RelayError, connect_relay
from relay.frames import QueueEmpty
from relay.profile import Profile, ProfileError
from relay.settings import parse_host_port

__all__ = ["app", "decode_content", "encode_content", "main"]

CONTENT_VERSION = 1
MAX_TEXT_BYTES = 64 * 1024
"""Longest text one message carries (the envelope limit is 96 KiB)."""
RECENT_IDS_SAVE_EVERY = 100
"""Received envelope ids are written to the profile after this many messages."""

app = typer.Typer(help="Cryptopass reference client.", no_args_is_help=True,
                  pretty_exceptions_enable=False)

_state: dict[str, Path] = {}


@app.callback()
def _options(profile: Annotated[Path, typer.Option(
        help="Profile directory holding this device's keys and settings.")] = Path(
        "cryptopass-profile")) -> None:
    _state["profile"] = profile


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _sole_exception(error: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (trio nurseries wrap errors)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _run(work: Callable[[], Awaitable[None]]) -> None:
    try:
        try:
            trio.run(work)
        except BaseExceptionGroup as group:
            raise _sole_exception(group) from None
    except (ProfileError, InvalidPhoneNumber, ValueError) as error:
        _fail(str(error))
    except RelayError as error:
        _fail(f"the relay refused: {error.code.name}: {error.reason}")
    except ConnectionClosed as error:
        _fail(str(error))
    except trio.TooSlowError:
        _fail("the relay did not answer in time")
    except OSError as error:
        _fail(f"network error: {error}")


def encode_content(*, sender_phone: str, text: str, sent_at: datetime.datetime) -> bytes:
    return msgpack.packb({"v": CONTENT_VERSION, "from": sender_phone, "text": text,
                          "sent_at": sent_at.isoformat(timespec="milliseconds")})


def decode_content(data: bytes) -> dict[str, Any]:
    """Parse message content; content that is not ours is reported, not fatal."""
    try:
        value = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException):
        return {"error": "unreadable content"}
    if not isinstance(value, dict) or value.get("v") != CONTENT_VERSION:
        return {"error": "unsupported content"}
    return {"from": value.get("from"), "text": value.get("text"), "sent_at": value.get("sent_at")}


def _connection(profile: Profile) -> tuple[str, int, Path | None]:
    _, _, relay, ca = profile.require_enrolled()
    host, port = parse_host_port(relay)
    return host, port, Path(ca) if ca else None


@app.command()
def enrol(phone: str,
          relay: Annotated[str, typer.Option(help="Relay address HOST:PORT.")] = "127.0.0.1:4433",
          ca: Annotated[Path | None, typer.Option(
              help="CA certificate to trust for the relay (PEM).")] = None) -> None:
    """Ask the relay to send an enrolment code by SMS to PHONE."""
    profile = Profile(_state["profile"])
    number = parse_phone(phone)
    host, port = parse_host_port(relay)
    key = profile.signing_key(create=True)

    async def work() -> None:
        async with connect_relay(host, port, ca=ca) as client:
            await client.enrol_start(number)
        profile.data.relay = relay
        profile.data.ca = str(ca.resolve()) if ca else None
        profile.data.phone = number
        profile.save()

    _run(work)
    typer.echo(f"A code was sent by SMS to {number}. "
               f"Complete with: cryptopass --profile {_state['profile']} verify CODE")
    if sys.stdin.isatty():
        code = typer.prompt("SMS code (or press Enter to verify later)", default="",
                            show_default=False)
        if code.strip():
            _verify(profile, code.strip(), key.verify_key.encode())


@app.command()
def verify(code: str) -> None:
    """Complete enrolment with the CODE received by SMS."""
    profile = Profile(_state["profile"])
    key = profile.signing_key()
    _verify(profile, code, key.verify_key.encode())


def _verify(profile: Profile, code: str, identity_key: bytes) -> None:
    if profile.data.phone is None or profile.data.relay is None:
        _fail("run 'cryptopass enrol PHONE' first")
    assert profile.data.phone is not None and profile.data.relay is not None
    host, port = parse_host_port(profile.data.relay)
    ca = Path(profile.data.ca) if profile.data.ca else None
    phone = profile.data.phone

    async def work() -> None:
        async with connect_relay(host, port, ca=ca) as client:
            user_id, device_id = await client.enrol_verify(phone, code, identity_key)
        profile.data.user_id, profile.data.device_id = user_id, device_id
        profile.save()

    _run(work)
    typer.echo(f"Enrolled {phone} as device {profile.data.device_id}.")


async def _authenticated(profile: Profile, client: RelayClient) -> None:
    user_id, device_id, _, _ = profile.require_enrolled()
    await client.authenticate(user_id, device_id, profile.signing_key())


@app.command()
def send(phone: str, text: str) -> None:
    """Send TEXT to the user with PHONE (stored by the relay if they are offline)."""
    profile = Profile(_state["profile"])
    host, port, ca = _connection(profile)
    number = parse_phone(phone)
    if len(text.encode()) > MAX_TEXT_BYTES:
        _fail(f"the text is longer than {MAX_TEXT_BYTES} bytes")

    async def work() -> None:
        async with connect_relay(host, port, ca=ca) as client:
            await _authenticated(profile, client)
            entries = await client.lookup([number])
            if not entries:
                _fail(f"{number} is not a reachable Cryptopass user")
            content = encode_content(sender_phone=profile.data.phone or "", text=text,
                                     sent_at=datetime.datetime.now(datetime.UTC))
            await client.send(entries[0].user_id,
                              dict.fromkeys(entries[0].device_ids, content),
                              client_message_id=secrets.randbelow(2**63))

    _run(work)


@app.command()
def receive(follow: Annotated[bool, typer.Option(
                help="Keep waiting for live messages after the stored ones.")] = False,
            count: Annotated[int | None, typer.Option(
                help="Exit after this many messages.", min=1)] = None,
            timeout: Annotated[float | None, typer.Option(
                help="Exit after this many seconds.", min=0)] = None) -> None:
    """Print received messages as JSON lines, acknowledging each once printed."""
    profile = Profile(_state["profile"])
    host, port, ca = _connection(profile)

    async def work() -> None:
        recent = profile.recent_ids()
        seen = set(recent)
        received = 0
        with trio.move_on_after(timeout if timeout is not None else float("inf")):
            async with connect_relay(host, port, ca=ca) as client:
                await _authenticated(profile, client)
                async for delivery in client.deliveries():
                    if isinstance(delivery, QueueEmpty):
                        if not follow:
                            break
                        continue
                    if delivery.envelope_id not in seen:
                        line = decode_content(delivery.ciphertext)
                        typer.echo(json.dumps(line, ensure_ascii=False))
                        sys.stdout.flush()
                        seen.add(delivery.envelope_id)
                        recent.append(delivery.envelope_id)
                        received += 1
                        if received % RECENT_IDS_SAVE_EVERY == 0:
                            profile.save_recent_ids(recent)
                    client.acknowledge(delivery.envelope_id)
                    if count is not None and received >= count:
                        break
        profile.save_recent_ids(recent)

    _run(work)


def main() -> None:
    app()
