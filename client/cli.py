"""``cryptopass``: the reference client on the command line.

Every message is end-to-end encrypted by `client.messenger` (PQXDH + Double Ratchet,
docs/CRYPTO.md) for every device of the recipient and the sender's own other devices;
the relay only sees ciphertext. Files (``send-file``, ``receive --download-dir``) are
encrypted with a key of their own and uploaded once (docs/FILES.md). Identity changes are
warned about on stderr and block sending until ``cryptopass --profile P trust PHONE``.

Failures: every expected one (a mistyped number or address, a missing certificate, a profile
not enrolled, a relay that cannot be reached or refuses) prints one line on stderr,
``error: WHAT (HINT)``, and exits with status 1. `main` is the one place that turns exceptions
into those lines (`_explain`); tracebacks and library logs appear only with ``--debug``.
"""

from __future__ import annotations

import datetime
import json
import logging
import shlex
import sys
import traceback
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import segno
import trio
import typer

from client.account_setup import verify_enrolment
from client.attachments import FileUnreadable
from client.call_probe import (
    ANSWER_TIMEOUT_SECONDS,
    CallNotAnswered,
    answer_and_echo,
    probe_call,
)
from client.calls import CallManager
from client.connection import (
    CertificateFileError,
    ConnectionClosed,
    HandshakeFailed,
    NoRelayReached,
    RelayError,
    RelayUnreachable,
    check_ca_file,
    connect_any,
)
from client.file_names import announced_name, safe_file_name
from client.group_cli import group_commands
from client.group_messaging import GroupError
from client.linking import LinkFailed, approve_link, link_new_device, remove_device
from client.message_content import MAX_CALL_MEMBERS, MAX_TEXT_BYTES, FileMessage
from client.messenger import (
    DeviceListProblem,
    IdentityChangedError,
    Messenger,
    ReceivedMessage,
    SendReceipt,
    UnknownContactError,
)
from client.prekey_upkeep import MissingPrekeysError
from client.profile import Profile, ProfileError
from client.profile_files import ProfileBusyError
from client.push_cli import CommandKit, push_commands, receive_push_wait
from client.sealed_cli import delivery_token_commands
from client.transfer_bars import transfer_bars
from crypto.primitives import CryptoError
from crypto.provisioning import LinkCodeError, ProvisioningError
from crypto.safety_number import format_safety_number
from transport.addresses import RelayAddressError, parse_relay_list
from wire.errors import RemoteProtocolError
from wire.frames import ErrorCode
from wire.phone import InvalidPhoneNumber, parse_phone

__all__ = ["app", "main", "message_line", "send_line"]

DEFAULT_PROFILE = Path("cryptopass-profile")
DEFAULT_RELAY = "127.0.0.1:4433"
RELAY_HELP = ("Relay address, HOST:PORT; or several, comma-separated (e.g. the two nodes of a "
              "cluster: H1:P1,H2:P2), tried in order: when one does not answer, the next.")
EXAMPLE_PHONE = "+33612345678"
EXAMPLE_CA = "cryptopass-data/tls/cert.pem"
"""Where `scripts/run-relay` and ``cryptopass-relay serve`` keep the relay's certificate."""
PHONE_HINT = f"use the international form, e.g. {EXAMPLE_PHONE}"
MAX_CALL_SECONDS = 3600.0
"""Longest synthetic stream ``call`` sends: a probe, not a conversation."""
MAX_FOLLOW_RECONNECTS = 5
"""Times in a row ``receive --follow`` reconnects after another command of the same profile
took the device's connection (REPLACED) without a message in between; beyond, two followers
are fighting over one device, and it stops with the error."""

app = typer.Typer(help="Cryptopass reference client: end-to-end encrypted messages through a "
                       "relay.", no_args_is_help=True, pretty_exceptions_enable=False)


@dataclass
class _Invocation:
    """What this run of the command knows, for the hints of its error messages."""

    profile: Path = DEFAULT_PROFILE
    debug: bool = False
    relay: str | None = None  #: the relay address (or comma-separated list) it contacts
    ca: Path | None = None  #: the CA file it trusts for it
    ca_from_option: bool = False  #: ``ca`` came from ``--ca`` (enrol), not from the profile
    phone: str | None = None  #: this device's number, once known


_invocation = _Invocation()
_FILE_REFUSALS = frozenset({ErrorCode.BLOB_TOO_LARGE, ErrorCode.BLOB_QUOTA_EXCEEDED})


@app.callback()
def _options(
        profile: Annotated[Path, typer.Option(
            help="Profile directory: this device's keys, enrolment and contacts.",
            show_default=True)] = DEFAULT_PROFILE,
        debug: Annotated[bool, typer.Option(
            "--debug", help="On failure, show the Python traceback and library logs.",
            show_default=False)] = False) -> None:
    _invocation.profile, _invocation.debug = profile, debug
    if debug:
        logging.basicConfig(level=logging.DEBUG,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    else:
        # Libraries' warnings (aioquic logs a refused handshake) would otherwise reach stderr
        # through logging's last-resort handler, beside our own one-line message.
        logging.getLogger().addHandler(logging.NullHandler())


# -- how failures are told -----------------------------------------------------------------


def _command(*words: str) -> str:
    """A command line to paste: ``cryptopass --profile P WORDS...`` (quoted for a shell)."""
    return shlex.join(["cryptopass", "--profile", str(_invocation.profile), *words])


def _enrol_command(*, new_ca: bool = False) -> str:
    """The ``enrol`` command that starts this profile's enrolment again, as far as known;
    with ``new_ca``, ``--ca CERT`` for the user to fill in."""
    words = ["enrol", _invocation.phone or "+NUMBER",
             "--relay", _invocation.relay or "HOST:PORT"]
    if new_ca or _invocation.relay is None:
        words += ["--ca", "CERT"]
    elif _invocation.ca is not None:
        words += ["--ca", str(_invocation.ca)]
    return _command(*words)


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _sole_exception(error: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (trio nurseries wrap errors)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _explain(error: BaseException) -> str | None:
    """The one line telling the user what went wrong and what to do, or None if the error
    is not one a user can cause (a bug: ``--debug`` shows where)."""
    relay = _invocation.relay or "HOST:PORT"
    at = f"the relay at {_invocation.relay}" if _invocation.relay else "the relay"
    match error:
        case (ProfileError() | UnknownContactError() | MissingPrekeysError() | LinkFailed()
              | ProfileBusyError() | DeviceListProblem() | LinkCodeError() | CallNotAnswered()
              | FileUnreadable() | GroupError()):
            return str(error)
        case ProvisioningError():
            return (f"link refused: {error}. Nothing was added to the account; if the new "
                    f"device shows a code, check it was typed from that device's screen")
        case InvalidPhoneNumber():
            return f"{error} ({PHONE_HINT})"
        case IdentityChangedError():
            return (f"the safety number with {error.phone} changed ({error.change}); nothing "
                    f"was sent. Compare `{_command('safety-number', error.phone)}` with them, "
                    f"then run `{_command('trust', error.phone)}`")
        case CertificateFileError():
            where = ("pass the relay's certificate with --ca" if _invocation.ca_from_option
                     else f"this profile's relay certificate: enrol again with the "
                          f"relay's certificate: `{_enrol_command(new_ca=True)}`")
            return f"{error.problem}: {error.path} ({where})"
        case RelayUnreachable() if "," in relay:
            return (f"cannot reach any relay of {relay}: no answer within {error.seconds:g} s "
                    f"(are they running, and are these their addresses?)")
        case RelayUnreachable():
            return (f"cannot reach the relay at {relay}: no answer within {error.seconds:g} s "
                    f"(is it running, and is {relay} its address?)")
        case NoRelayReached():
            return (f"cannot reach any relay of {relay}: {error.reason} (are they running, and "
                    f"are these their addresses?)")
        case HandshakeFailed() if error.certificate_refused:
            return _certificate_refused(error)
        case HandshakeFailed():
            return f"{at} refused the connection: {error.reason or error}"
        case RelayError() if error.code in _FILE_REFUSALS:
            return f"the relay refused the file: {error.code.name}: {error.reason}"
        case RelayError() if error.code == ErrorCode.VERIFICATION_FAILED:
            return (f"the relay refused: VERIFICATION_FAILED: {error.reason}. For a new code, "
                    f"run `{_enrol_command()}` again")
        case RelayError() | ConnectionClosed() if error.code == ErrorCode.DEVICE_REVOKED:
            return (f"the relay no longer accepts this device (DEVICE_REVOKED: {error.reason}). "
                    f"To use it for the same account again, link it from a device still on "
                    f"the account: `cryptopass --profile NEW_PROFILE link --relay "
                    f"{_invocation.relay or 'HOST:PORT'} ...` then `cryptopass devices approve "
                    f"CODE` there. Enrolling the number by SMS (`{_enrol_command()}`) creates a "
                    f"new account instead, and revokes every device of the current one")
        case RelayError() | ConnectionClosed() if error.code == ErrorCode.AUTHENTICATION_FAILED:
            return (f"the relay does not accept this device (AUTHENTICATION_FAILED: "
                    f"{error.reason}): it was deleted, or enrolled at another relay; to enrol "
                    f"it again, run `{_enrol_command()}`")
        case RelayError() if error.code == ErrorCode.PUSH_PROVIDER_UNAVAILABLE:
            return (f"{at} does not offer this push provider (PUSH_PROVIDER_UNAVAILABLE: "
                    f"{error.reason}); its operator turns providers on (docs/PUSH.md), and "
                    f"`--provider outbox` always works")
        case RelayError() if error.code == ErrorCode.INVALID_PUSH_TARGET:
            return (f"{at} refused the push target (INVALID_PUSH_TARGET: {error.reason}); "
                    f"nothing was registered")
        case RelayError():
            return f"the relay refused: {error.code.name}: {error.reason}"
        case RemoteProtocolError():
            return f"the relay broke the protocol: {error}"
        case ConnectionClosed():
            return str(error)
        case trio.TooSlowError():
            return f"{at} did not answer in time"
        case CryptoError():
            return f"end-to-end encryption refused: {error}"
        case OSError() if error.filename is not None:
            return f"{error.strerror or error}: {error.filename}"
        case OSError():
            return f"network error: {error}"
        case ValueError():
            return str(error)
    return None


def _certificate_refused(error: HandshakeFailed) -> str:
    problem = f"the relay's certificate is not trusted ({error.reason or 'refused'})"
    if _invocation.ca is None and _invocation.ca_from_option:
        return f"{problem}: pass the relay's certificate with --ca, e.g. --ca {EXAMPLE_CA}"
    if _invocation.ca is None:
        return (f"{problem}: this profile was enrolled without --ca; enrol again with the "
                f"relay's certificate: `{_enrol_command(new_ca=True)}`")
    return (f"{problem}: {_invocation.ca} is not the certificate of the relay at "
            f"{_invocation.relay} (or the relay's certificate changed)")


def _report(error: BaseException) -> NoReturn:
    error = _sole_exception(error)
    message = _explain(error)
    if _invocation.debug:
        traceback.print_exception(error)
    elif message is None:
        message = (f"unexpected {type(error).__name__}: {error} "
                   "(run the command again with --debug, e.g. `cryptopass --debug ...`, "
                   "to see where)")
    if message is not None:
        typer.echo(f"error: {message}", err=True)
    sys.exit(1)


def _run(work: Callable[[], Awaitable[None]]) -> None:
    try:
        trio.run(work)
    except BaseExceptionGroup as group:
        raise _sole_exception(group) from None


# -- what the user types -------------------------------------------------------------------


def _phone(text: str) -> str:
    """``text`` as an E.164 number; a clear refusal naming what was typed otherwise."""
    try:
        return parse_phone(text)
    except InvalidPhoneNumber as error:
        if not text.strip().startswith("+"):
            _fail(f"invalid phone number {text!r}: start with + and the country code, "
                  f"e.g. {EXAMPLE_PHONE}")
        _fail(f"invalid phone number {text!r}: {error} ({PHONE_HINT})")


def _relay_addresses(text: str) -> list[tuple[str, int]]:
    """The addresses of ``--relay`` (or of the profile), in order; a clear refusal naming the
    bad entry otherwise."""
    try:
        return parse_relay_list(text)
    except RelayAddressError as error:
        if error.entry == text.strip():  # one address, as most type it: its usual message
            _fail(f"invalid relay address {text!r}: expected HOST:PORT with a port from 0 to "
                  f"65535, e.g. --relay {DEFAULT_RELAY}")
        _fail(f"invalid relay address list: {error}; give HOST:PORT entries (ports 0 to 65535) "
              f"separated by commas, e.g. --relay {DEFAULT_RELAY},127.0.0.2:4433")


def _profile() -> Profile:
    """The profile, with what it says about its relay noted for the error messages."""
    profile = Profile(_invocation.profile)
    _invocation.relay = profile.data.relay
    _invocation.ca = Path(profile.data.ca) if profile.data.ca else None
    _invocation.phone = profile.data.phone
    return profile


def _enrolled_profile() -> Profile:
    profile = _profile()
    profile.require_enrolled()
    return profile


PhoneArgument = Annotated[str, typer.Argument(
    metavar="PHONE", help=f"The contact's phone number in international form, e.g. "
                          f"{EXAMPLE_PHONE}.", show_default=False)]


# -- commands ------------------------------------------------------------------------------


def message_line(message: ReceivedMessage) -> dict[str, Any]:
    """The JSON line ``receive`` prints for one message (never logs it anywhere else)."""
    sent_at = datetime.datetime.fromtimestamp(message.accepted_at / 1000, datetime.UTC)
    accepted_at = sent_at.isoformat(timespec="milliseconds")
    if message.sender is None:  # a sealed envelope refused: a warning, never a message
        return {"warning": message.problem, "accepted_at": accepted_at}
    line: dict[str, Any] = {"sender_user_id": message.sender.user_id,
                            "sender_device_id": message.sender.device_id,
                            "accepted_at": accepted_at, "sealed": message.sealed}
    if message.content is None:
        return {"error": message.problem, **line}
    content = message.content
    problems = [] if message.sender_confirmed else ["the relay does not confirm the sender's "
                                                    "number"]
    if isinstance(content, FileMessage) and message.problem is not None:
        problems.append(message.problem)  # the file was refused: nothing was saved
    if problems:
        line["error"] = "; ".join(problems)
    line["from" if message.sender_confirmed else "claimed_from"] = content.sender_phone
    if message.group is not None:  # this device's name for the group
        line["group"] = message.group
    else:
        line["to"] = content.recipient_phone
    if isinstance(content, FileMessage):
        line |= {"name": safe_file_name(content.name), "size": content.size,
                 "media_type": content.media_type}
        if message.file is not None:
            line["file"] = str(message.file)
    else:
        line["text"] = content.text
    return {**line, "sent_at": content.sent_at, "identity_changed": message.identity_changed}


def send_line(phone: str, receipt: SendReceipt) -> dict[str, Any]:
    """The JSON line ``send`` prints once the relay stored the message: ``message_id`` is
    the SEND's client_message_id (a SEALED_SEND's 16-byte id in hex when sealed), ``devices``
    how many of the recipient's devices it was encrypted for, ``copies`` how many of this
    user's other devices got a copy, ``sealed`` whether it went sealed."""
    return {"sent": bool(receipt.recipient_devices), "to": phone,
            "message_id": receipt.message_id, "devices": len(receipt.recipient_devices),
            "copies": len(receipt.own_devices), "sealed": receipt.sealed}


@app.command()
def enrol(phone: Annotated[str, typer.Argument(
              metavar="PHONE", help=f"This device's phone number in international form, e.g. "
                                    f"{EXAMPLE_PHONE}.", show_default=False)],
          relay: Annotated[str, typer.Option(
              help=RELAY_HELP, show_default=True)] = DEFAULT_RELAY,
          ca: Annotated[Path | None, typer.Option(
              help=f"The relay's TLS certificate (PEM), e.g. {EXAMPLE_CA}; needed unless "
                   f"a public CA signed it.", show_default=False)] = None) -> None:
    """Ask the relay to send an enrolment code by SMS to PHONE.

    The relay answers the same whether or not an organisation declared the number, so only
    the SMS tells. Complete with `verify CODE`.
    """
    profile = _profile()
    number = _phone(phone)
    addresses = _relay_addresses(relay)
    if profile.data.user_id is not None and profile.account_key() is not None:
        typer.echo(f"warning: enrolling {number} by SMS creates a new account identity: the "
                   f"devices of the current one are revoked, and contacts see the safety "
                   f"number change (to add a device instead, use `cryptopass link`)", err=True)
    _invocation.relay, _invocation.ca, _invocation.ca_from_option = relay, ca, True
    _invocation.phone = number
    if ca is not None:
        check_ca_file(ca)
    profile.signing_key(create=True)

    async def work() -> None:
        async with connect_any(addresses, ca=ca) as client:
            await client.enrol_start(number)
        profile.data.relay = relay
        profile.data.ca = str(ca.resolve()) if ca else None
        profile.data.phone = number
        profile.save()

    _run(work)
    typer.echo(f"If {number} is declared by an organisation, a code was sent to it by SMS. "
               f"Complete with: {_command('verify', 'CODE')}")
    if sys.stdin.isatty():
        code = typer.prompt("SMS code (or press Enter to verify later)", default="",
                            show_default=False)
        if code.strip():
            _verify(profile, code.strip())


@app.command()
def verify(code: Annotated[str, typer.Argument(
        metavar="CODE", help="The 6-digit code received by SMS.", show_default=False)]) -> None:
    """Complete enrolment with the CODE received by SMS."""
    profile = _profile()
    if profile.data.phone is None or profile.data.relay is None:
        _fail(f"this profile has no enrolment in progress: run `{_enrol_command()}` first")
    profile.signing_key()  # a clear error now if the profile lost its key
    _verify(profile, code)


def _verify(profile: Profile, code: str) -> None:
    if profile.data.phone is None or profile.data.relay is None:
        _fail(f"this profile has no enrolment in progress: run `{_enrol_command()}` first")
    _relay_addresses(profile.data.relay)
    phone = profile.data.phone

    async def work() -> None:
        await verify_enrolment(profile, code)

    _run(work)
    typer.echo(f"Enrolled {phone} as device {profile.data.device_id}.")


def _warn_identity_changed(message: ReceivedMessage, phone: str) -> None:
    typer.echo(f"warning: the safety number with {phone} changed (the number now speaks for "
               f"another account key: enrolled again on a new phone, or by someone who got "
               f"its SMS code). Sending to {phone} is blocked until you compare "
               f"`{_command('safety-number', phone)}` with them and "
               f"run `{_command('trust', phone)}`.", err=True)


@app.command()
def send(phone: PhoneArgument,
         text: Annotated[str, typer.Argument(
             metavar="TEXT", help=f"The message, at most {MAX_TEXT_BYTES} bytes of UTF-8.",
             show_default=False)]) -> None:
    """Send TEXT, end-to-end encrypted, to the user with PHONE.

    Copies go to this user's other devices; the relay stores the message while they are
    offline. Sent sealed (the relay is not told who sent it) when the contact shared its
    profile key, identified otherwise. Prints one JSON line once the relay stored it:
    {"sent": true, "to": PHONE, "message_id": N (a hex id when sealed), "devices": K,
    "copies": C, "sealed": true|false}.
    """
    profile = _enrolled_profile()
    number = _phone(phone)
    if len(text.encode()) > MAX_TEXT_BYTES:
        _fail(f"the text is longer than {MAX_TEXT_BYTES} bytes")

    async def work() -> None:
        async with Messenger.connect(profile) as messenger:
            receipt = await messenger.send_text(number, text)
        typer.echo(json.dumps(send_line(number, receipt), ensure_ascii=False))
        if receipt.own_copy_problem is not None:
            typer.echo(f"warning: sent to {number}, but this account's other devices got no "
                       f"copy: {receipt.own_copy_problem}", err=True)

    _run(work)


@app.command("send-file")
def send_file(phone: PhoneArgument,
              path: Annotated[Path, typer.Argument(
                  metavar="PATH", help="The file to send (the relay's limit applies: 100 MiB "
                                       "by default).", exists=True, dir_okay=False,
                  readable=True, show_default=False)]) -> None:
    """Send the file at PATH, end-to-end encrypted, to the user with PHONE.

    The file is encrypted with a fresh key as it is read and uploaded once; its key and
    digest then go to every device of PHONE and this user's other devices. Run the same
    command again to resume an interrupted upload. Prints one JSON line once the relay
    stored the message: {"sent": true, "to": PHONE, "message_id": N, "devices": K,
    "copies": C, "name": NAME, "size": BYTES}. A progress bar shows on stderr when it is a
    terminal.
    """
    profile = _enrolled_profile()
    number = _phone(phone)

    async def work() -> None:
        with transfer_bars(terminal=sys.stderr.isatty()) as progress:
            async with Messenger.connect(profile) as messenger:
                receipt = await messenger.send_file(number, path, progress=progress)
        line = send_line(number, receipt) | {"name": announced_name(path),
                                              "size": path.stat().st_size}
        typer.echo(json.dumps(line, ensure_ascii=False))
        if receipt.own_copy_problem is not None:
            typer.echo(f"warning: sent to {number}, but this account's other devices got no "
                       f"copy: {receipt.own_copy_problem}", err=True)

    _run(work)


@app.command()
def receive(follow: Annotated[bool, typer.Option(
                help="Keep waiting for live messages after the stored ones.",
                show_default=True)] = False,
            count: Annotated[int | None, typer.Option(
                help="Exit after this many messages (default: no limit).", min=1,
                show_default=False)] = None,
            timeout: Annotated[float | None, typer.Option(
                help="Exit after this many seconds (default: no limit); a relay that has "
                     "not answered by then is an error.", min=0, show_default=False)] = None,
            accept_calls: Annotated[bool, typer.Option(
                help="Answer every call at once and echo its audio back (a test peer for "
                     "`cryptopass call`); prints a JSON line when a call is answered and "
                     "when it ends.", show_default=True)] = False,
            push_wait: Annotated[bool, typer.Option(
                "--push-wait",
                help="Wait disconnected for a wake-up push, as a phone does: serve a Web Push "
                     "endpoint on --push-listen, register it with the relay, print what is "
                     "stored, disconnect; on each wake-up, connect and print what arrived. "
                     "Ends after the first wake-up (or --count messages); the endpoint is "
                     "unregistered when it ends. The relay must allow loopback endpoints "
                     "(push_webpush_allow_loopback_http, docs/PUSH.md).",
                show_default=False)] = False,
            push_listen: Annotated[str, typer.Option(
                metavar="HOST:PORT",
                help="Where --push-wait serves its Web Push endpoint (port 0: any free one).",
                show_default=True)] = "127.0.0.1:0",
            download_dir: Annotated[Path | None, typer.Option(
                help="Save received files here (mode 0600), after checking them; the JSON "
                     "line then has \"file\": PATH. Without it, a file message shows its "
                     "name and size only, and the file is not fetched.",
                exists=True, file_okay=False, writable=True, show_default=False)] = None,
            ) -> None:
    """Decrypt received messages and print them as JSON lines.

    Each message is acknowledged once printed; a warning goes to stderr when a contact's
    identity key changed. With --download-dir, each file is downloaded, decrypted and
    checked first (an interrupted download resumes on the next run; a file that fails its
    check is not saved, and its line has "error"); a progress bar shows on stderr when it
    is a terminal. Calls are ignored (they ring nowhere) unless
    --accept-calls.
    """
    profile = _enrolled_profile()
    if push_wait:
        if follow:
            _fail("--push-wait and --follow exclude each other: --push-wait waits "
                  "disconnected, --follow connected")
        if accept_calls:
            _fail("--push-wait and --accept-calls exclude each other: a call is answered "
                  "connected (--follow)")
        if download_dir is not None:
            _fail("--push-wait does not fetch files yet: run `receive --download-dir DIR` "
                  "once it has woken you")
        receive_push_wait(_kit, profile, push_listen, count=count, timeout=timeout)
        return

    async def work() -> None:
        received = 0
        reached = trio.Event()
        ready = False
        replaced = 0
        with (transfer_bars(terminal=sys.stderr.isatty()) as progress,
              trio.move_on_after(timeout if timeout is not None else float("inf")) as waiting):
            while True:
                try:
                    async with Messenger.connect(profile, reached=reached,
                                                 hold_profile=not follow) as messenger, \
                            trio.open_nursery() as calls, aclosing(
                            messenger.messages(stop_when_empty=not follow,
                                               download_dir=download_dir,
                                               progress=progress)) as messages:
                        if accept_calls:
                            _answer_calls(calls, messenger)
                        ready = True
                        async for message in messages:
                            replaced = 0
                            line = message_line(message)
                            typer.echo(json.dumps(line, ensure_ascii=False))
                            sys.stdout.flush()
                            if message.identity_changed and message.content is not None:
                                _warn_identity_changed(message, message.content.sender_phone)
                            received += 1
                            if count is not None and received >= count:
                                break
                        calls.cancel_scope.cancel()
                    break
                except* ConnectionClosed as closed:
                    # Another command on this profile (a send) took the device's connection:
                    # reconnect once it is done (connecting waits for the profile's lock).
                    if not (follow and replaced < MAX_FOLLOW_RECONNECTS and all(
                            error.code == ErrorCode.REPLACED
                            for error in closed.exceptions
                            if isinstance(error, ConnectionClosed))):
                        raise
                    replaced += 1
        if waiting.cancelled_caught and not ready and timeout is not None:
            if not reached.is_set():  # an empty inbox must not look like a relay that is down
                host, port = parse_relay_list(profile.data.relay or "")[0]
                raise RelayUnreachable(host, port, timeout)  # told for the whole list
            raise trio.TooSlowError

    _run(work)


def _print_message(message: ReceivedMessage) -> None:
    typer.echo(json.dumps(message_line(message), ensure_ascii=False))
    sys.stdout.flush()
    if message.identity_changed and message.content is not None:
        _warn_identity_changed(message, message.content.sender_phone)


def _answer_calls(nursery: trio.Nursery, messenger: Messenger) -> None:
    manager = CallManager(messenger)

    def report(line: dict[str, Any]) -> None:
        typer.echo(json.dumps(line, ensure_ascii=False))
        sys.stdout.flush()

    nursery.start_soon(manager.run)
    nursery.start_soon(answer_and_echo, manager, report)


@app.command()
def call(phone: Annotated[str | None, typer.Argument(
             metavar="PHONE", help=f"The number to call, e.g. {EXAMPLE_PHONE}.",
             show_default=False)] = None,
         group: Annotated[str | None, typer.Option(
             "--group", metavar="NAME", help=f"Start a group call. Until named groups "
             f"exist, NAME is a comma-separated list of 2 to {MAX_CALL_MEMBERS} numbers.",
             show_default=False)] = None,
         seconds: Annotated[float, typer.Option(
             help="How long to send the synthetic audio stream.", min=0.02,
             max=MAX_CALL_SECONDS)] = 5.0,
         answer_timeout: Annotated[float, typer.Option(
             help="How long to ring before giving up.", min=1,
             max=60)] = ANSWER_TIMEOUT_SECONDS) -> None:
    """Call PHONE (or a group) and measure the line with a synthetic audio stream.

    Every device of each callee rings; the first to answer takes the call. This sends 50
    packets a second of 160 bytes (like 20 ms Opus frames), each end-to-end encrypted with
    SFrame, which a callee running `receive --follow --accept-calls` echoes back. Prints one
    JSON object: {"to": [PHONE, ...], "packets_sent": N, "packets_received": N, "peers": P,
    "loss": FRACTION, "jitter_ms": MS, "round_trip_p50_ms": MS, "one_way_delay_ms": MS,
    "undecryptable": N, "unknown_key": N}; in a group call each callee echoes, so N received
    is up to P x sent. Messages that arrive during the call are printed as JSON lines on stderr.
    """
    profile = _enrolled_profile()
    if (phone is None) == (group is None):
        _fail("give either PHONE or --group NAME (a comma-separated list of numbers)")
    phones = [_phone(phone)] if phone is not None else [
        _phone(entry) for entry in (group or "").split(",") if entry.strip()]
    if group is not None and not 2 <= len(phones) <= MAX_CALL_MEMBERS:
        _fail(f"a group call takes 2 to {MAX_CALL_MEMBERS} numbers, comma-separated")
    if len(set(phones)) != len(phones) or profile.data.phone in phones:
        _fail("each number once, and not this device's own")

    async def work() -> None:
        async with Messenger.connect(profile) as messenger, trio.open_nursery() as nursery:
            manager = CallManager(messenger)
            nursery.start_soon(manager.run)
            nursery.start_soon(_texts_to_stderr, messenger)
            result = await probe_call(manager, phones, seconds,
                                      answer_timeout=answer_timeout)
            nursery.cancel_scope.cancel()
        typer.echo(json.dumps(result))

    _run(work)


async def _texts_to_stderr(messenger: Messenger) -> None:
    """Read deliveries during a call (call messages arrive among them); texts go to stderr."""
    async with aclosing(messenger.messages()) as messages:
        async for message in messages:
            typer.echo(json.dumps(message_line(message), ensure_ascii=False), err=True)


@app.command("safety-number")
def safety_number_command(phone: PhoneArgument) -> None:
    """Print the safety number with PHONE: compare it with theirs (the same 60 digits)."""
    profile = _enrolled_profile()
    number = _phone(phone)

    async def work() -> None:
        async with Messenger.connect(profile) as messenger:
            digits = await messenger.safety_number(number)
            contact = messenger.contacts[number]
        typer.echo(format_safety_number(digits))
        if contact.changed:
            typer.echo(f"warning: the keys of {number} changed since you last accepted them; "
                       f"if these digits match theirs, run "
                       f"`{_command('trust', number, '--safety-number', digits)}`", err=True)

    _run(work)


@app.command()
def trust(phone: PhoneArgument,
          safety_number: Annotated[str | None, typer.Option(
              help="Trust only if the safety number is exactly these digits.",
              show_default=False)] = None) -> None:
    """Accept PHONE's current identity keys after comparing safety numbers."""
    profile = _enrolled_profile()
    number = _phone(phone)

    async def work() -> None:
        async with Messenger.connect(profile) as messenger:
            digits = await messenger.trust(number, expected_safety_number=safety_number)
        typer.echo(f"Trusted {number}, safety number {format_safety_number(digits)}.")

    _run(work)


devices_app = typer.Typer(help="This account's devices: list, approve a new one, remove one.",
                          invoke_without_command=True, no_args_is_help=False)
app.add_typer(devices_app, name="devices")


@devices_app.callback()
def devices(context: typer.Context) -> None:
    """List this account's devices (its signed list) as JSON lines; the one in use is marked."""
    if context.invoked_subcommand is not None:
        return
    profile = _enrolled_profile()

    async def work() -> None:
        async with Messenger.connect(profile) as messenger:
            view = await messenger.own_devices()
        for device_id, key in sorted(view.devices.items()):
            typer.echo(json.dumps({"device_id": device_id, "identity_key": key.hex(),
                                   "this_device": device_id == messenger.device_id,
                                   "list_version": view.device_list.version}))

    _run(work)


@devices_app.command("approve")
def devices_approve(code: Annotated[str, typer.Argument(
        metavar="CODE", help="The link code the new device shows (`cryptopass link`).",
        show_default=False)]) -> None:
    """Add the new device that shows CODE to this account (signs the new device list)."""
    profile = _enrolled_profile()

    async def work() -> None:
        async with Messenger.connect(profile) as messenger:
            typer.echo("Waiting for the new device to answer ...", err=True)
            linked = await approve_link(messenger, code)
        typer.echo(json.dumps({"approved": True, "device_id": linked.device_id,
                               "list_version": linked.device_list_version}))

    _run(work)


@devices_app.command("remove")
def devices_remove(device_id: Annotated[int, typer.Argument(
        metavar="ID", help="The device to remove (see `cryptopass devices`).", min=1,
        show_default=False)]) -> None:
    """Remove device ID from this account: the relay revokes it at once, and it receives
    nothing more."""
    profile = _enrolled_profile()

    async def work() -> None:
        async with Messenger.connect(profile) as messenger:
            removed = await remove_device(messenger, device_id)
        typer.echo(json.dumps({"removed": True, "device_id": removed.device_id,
                               "list_version": removed.device_list_version}))

    _run(work)


_kit = CommandKit(run=_run, enrolled_profile=_enrolled_profile, fail=_fail, command=_command,
                  print_message=_print_message)
app.add_typer(push_commands(_kit), name="push")
app.add_typer(group_commands(_kit, _phone), name="group")
app.add_typer(delivery_token_commands(_kit), name="delivery-token")


@app.command()
def link(relay: Annotated[str, typer.Option(
             help=RELAY_HELP, show_default=True)] = DEFAULT_RELAY,
         ca: Annotated[Path | None, typer.Option(
             help=f"The relay's TLS certificate (PEM), e.g. {EXAMPLE_CA}.",
             show_default=False)] = None,
         qr: Annotated[bool, typer.Option(
             help="Also draw the code as a QR code in the terminal.",
             show_default=True)] = True) -> None:
    """Link this new device to an existing account: shows a code to approve on a device
    already on the account with `cryptopass devices approve CODE`."""
    profile = _profile()
    _relay_addresses(relay)
    _invocation.relay, _invocation.ca, _invocation.ca_from_option = relay, ca, True
    if ca is not None:
        check_ca_file(ca)
        ca = ca.resolve()

    def show(code: str) -> None:
        typer.echo(f"Link code: {code}")
        if qr:
            segno.make(code, error="m").terminal(compact=True)
        typer.echo(f"On a device of the account, run: cryptopass devices approve {code}")
        sys.stdout.flush()

    async def work() -> None:
        linked = await link_new_device(profile, relay, ca, show_code=show)
        typer.echo(json.dumps({"linked": True, "user_id": linked.user_id,
                               "device_id": linked.device_id,
                               "list_version": linked.device_list_version}))

    _run(work)


def main() -> None:
    """The ``cryptopass`` entry point: the one place where exceptions become messages."""
    try:
        app()
    except Exception as error:  # the edge: every failure becomes one line
        _report(error)
