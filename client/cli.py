"""``cryptopass``: the reference client on the command line.

Every message is end-to-end encrypted by `client.messenger` (PQXDH + Double Ratchet,
docs/CRYPTO.md) for every device of the recipient and the sender's own other devices;
the relay only sees ciphertext. Identity changes are warned about on stderr and block
sending until ``cryptopass trust PHONE``.
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Annotated, Any, NoReturn

import trio
import typer

from client.connection import ConnectionClosed, RelayError, connect_relay
from client.message_content import MAX_TEXT_BYTES
from client.messenger import (
    IdentityChangedError,
    Messenger,
    ReceivedMessage,
    UnknownContactError,
    create_device_state,
)
from client.prekey_upkeep import MissingPrekeysError
from client.profile import Profile, ProfileError
from crypto.primitives import CryptoError
from crypto.safety_number import format_safety_number
from transport.addresses import parse_host_port
from wire.errors import RemoteProtocolError
from wire.phone import InvalidPhoneNumber, parse_phone

__all__ = ["app", "main", "message_line"]

app = typer.Typer(help="Cryptopass reference client.", no_args_is_help=True,
                  pretty_exceptions_enable=False)

_state: dict[str, Path] = {}


@app.callback()
def _options(profile: Annotated[Path, typer.Option(
        help="Profile directory holding this device's keys and settings.")] = Path(
        "cryptopass-profile")) -> None:
    _state["profile"] = profile


def _fail(message: str) -> NoReturn:
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
    except (ProfileError, InvalidPhoneNumber, ValueError, UnknownContactError,
            IdentityChangedError, MissingPrekeysError) as error:
        _fail(str(error))
    except CryptoError as error:
        _fail(f"end-to-end encryption refused: {error}")
    except RelayError as error:
        _fail(f"the relay refused: {error.code.name}: {error.reason}")
    except RemoteProtocolError as error:
        _fail(f"the relay broke the protocol: {error}")
    except ConnectionClosed as error:
        _fail(str(error))
    except trio.TooSlowError:
        _fail("the relay did not answer in time")
    except OSError as error:
        _fail(f"network error: {error}")


def message_line(message: ReceivedMessage) -> dict[str, Any]:
    """The JSON line ``receive`` prints for one message (never logs it anywhere else)."""
    sent_at = datetime.datetime.fromtimestamp(message.accepted_at / 1000, datetime.UTC)
    line: dict[str, Any] = {"sender_user_id": message.sender.user_id,
                            "sender_device_id": message.sender.device_id,
                            "accepted_at": sent_at.isoformat(timespec="milliseconds")}
    if message.content is None:
        return {"error": message.problem, **line}
    content = message.content
    if not message.sender_confirmed:
        line["error"] = "the relay does not confirm the sender's number"
        line["claimed_from"] = content.sender_phone
    else:
        line["from"] = content.sender_phone
    return {**line, "to": content.recipient_phone, "text": content.text,
            "sent_at": content.sent_at, "identity_changed": message.identity_changed}


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
    host, port = parse_host_port(profile.data.relay)
    ca = Path(profile.data.ca) if profile.data.ca else None
    phone = profile.data.phone

    async def work() -> None:
        async with connect_relay(host, port, ca=ca) as client:
            user_id, device_id = await client.enrol_verify(phone, code, identity_key)
        profile.data.user_id, profile.data.device_id = user_id, device_id
        profile.save()
        create_device_state(profile)
        # Publish the signed, last-resort and one-time prekeys at once, so that
        # others can start sessions with this device (PROTOCOL.md "Prekeys").
        async with Messenger.connect(profile):
            pass

    _run(work)
    typer.echo(f"Enrolled {phone} as device {profile.data.device_id}.")


def _warn_identity_changed(message: ReceivedMessage, phone: str) -> None:
    typer.echo(f"warning: the safety number with {phone} changed (device "
               f"{message.sender.device_id} has a new identity key). Sending to {phone} is "
               f"blocked until you compare 'cryptopass safety-number {phone}' with them and "
               f"run 'cryptopass trust {phone}'.", err=True)


@app.command()
def send(phone: str, text: str) -> None:
    """Send TEXT, end-to-end encrypted, to the user with PHONE (and copies to this user's
    other devices); the relay stores it while they are offline."""
    profile = Profile(_state["profile"])
    profile.require_enrolled()
    number = parse_phone(phone)
    if len(text.encode()) > MAX_TEXT_BYTES:
        _fail(f"the text is longer than {MAX_TEXT_BYTES} bytes")

    async def work() -> None:
        async with Messenger.connect(profile) as messenger:
            await messenger.send_text(number, text)

    _run(work)


@app.command()
def receive(follow: Annotated[bool, typer.Option(
                help="Keep waiting for live messages after the stored ones.")] = False,
            count: Annotated[int | None, typer.Option(
                help="Exit after this many messages.", min=1)] = None,
            timeout: Annotated[float | None, typer.Option(
                help="Exit after this many seconds.", min=0)] = None) -> None:
    """Decrypt received messages and print them as JSON lines, acknowledging each once
    printed; warn on stderr when a contact's identity key changed."""
    profile = Profile(_state["profile"])
    profile.require_enrolled()

    async def work() -> None:
        received = 0
        with trio.move_on_after(timeout if timeout is not None else float("inf")):
            async with Messenger.connect(profile) as messenger, aclosing(
                    messenger.messages(stop_when_empty=not follow)) as messages:
                async for message in messages:
                    line = message_line(message)
                    typer.echo(json.dumps(line, ensure_ascii=False))
                    sys.stdout.flush()
                    if message.identity_changed and message.content is not None:
                        _warn_identity_changed(message, message.content.sender_phone)
                    received += 1
                    if count is not None and received >= count:
                        break

    _run(work)


@app.command("safety-number")
def safety_number_command(phone: str) -> None:
    """Print the safety number with PHONE: compare it with theirs (the same 60 digits)."""
    profile = Profile(_state["profile"])
    number = parse_phone(phone)

    async def work() -> None:
        async with Messenger.connect(profile) as messenger:
            digits = await messenger.safety_number(number)
            contact = messenger.contacts[number]
        typer.echo(format_safety_number(digits))
        if contact.changed:
            typer.echo(f"warning: the keys of {number} changed since you last accepted them; "
                       f"if these digits match theirs, run 'cryptopass trust {number}'",
                       err=True)

    _run(work)


@app.command()
def trust(phone: str,
          safety_number: Annotated[str | None, typer.Option(
              help="Trust only if the safety number is exactly these digits.")] = None) -> None:
    """Accept PHONE's current identity keys after comparing safety numbers."""
    profile = Profile(_state["profile"])
    number = parse_phone(phone)

    async def work() -> None:
        async with Messenger.connect(profile) as messenger:
            digits = await messenger.trust(number, expected_safety_number=safety_number)
        typer.echo(f"Trusted {number}, safety number {format_safety_number(digits)}.")

    _run(work)


@app.command()
def devices() -> None:
    """List this user's devices (the one in use is marked)."""
    profile = Profile(_state["profile"])

    async def work() -> None:
        async with Messenger.connect(profile) as messenger:
            listed = await messenger.own_devices()
            own = messenger.contacts[messenger.phone]
            for info in listed:
                registered = datetime.datetime.fromtimestamp(info.registered_at / 1000,
                                                             datetime.UTC)
                if info.device_id == messenger.device_id:
                    state = "this device"
                elif info.device_id in own.pending:
                    state = "new, not trusted yet"
                else:
                    state = "trusted" if info.device_id in own.accepted else "not seen yet"
                typer.echo(json.dumps({"device_id": info.device_id,
                                       "registered_at": registered.isoformat(
                                           timespec="seconds"), "state": state}))

    _run(work)


def main() -> None:
    app()
