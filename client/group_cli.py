"""The ``group`` commands of ``cryptopass`` (client/cli.py adds them): group conversations
whose members only the members' devices know (docs/GROUPS.md)."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

import typer

from client.file_names import announced_name
from client.group_messaging import (
    GroupReceipt,
    add_member,
    create_group,
    remove_member,
    send_group_file,
    send_group_text,
)
from client.groups import MAX_GROUP_MEMBERS, MAX_GROUP_NAME_CHARS
from client.message_content import MAX_TEXT_BYTES
from client.messenger import Messenger, saved_groups
from client.push_cli import CommandKit
from client.transfer_bars import transfer_bars

__all__ = ["group_commands", "group_line"]

NameArgument = Annotated[str, typer.Argument(
    metavar="NAME", help=f"The group's name on this device (at most {MAX_GROUP_NAME_CHARS} "
                         f"characters; see `group list`).", show_default=False)]
PhoneArgument = Annotated[str, typer.Argument(
    metavar="PHONE", help="A member's phone number in international form, e.g. +33612345678.",
    show_default=False)]


def group_line(action: str, receipt: GroupReceipt) -> dict[str, object]:
    """The JSON line a group command prints once the relay stored its message."""
    return {action: True, "group": receipt.group, "message_id": receipt.message_id,
            "devices": receipt.devices, "keys_sent": receipt.keys_sent,
            "rekeyed": receipt.rekeyed, "sealed": receipt.sealed}


def _change(kit: CommandKit, action: str,
            step: Callable[[Messenger], Awaitable[GroupReceipt]]) -> None:
    """Connect, do ``step``, print its JSON line."""
    profile = kit.enrolled_profile()

    async def work() -> None:
        async with Messenger.connect(profile) as messenger:
            receipt = await step(messenger)
        typer.echo(json.dumps(group_line(action, receipt), ensure_ascii=False))

    kit.run(work)


def group_commands(kit: CommandKit, parse_phone: Callable[[str], str]) -> typer.Typer:
    """The ``group`` command group; ``parse_phone`` checks every number typed (E.164, or a
    one-line refusal)."""
    group_app = typer.Typer(help="Group conversations: one upload per message, whatever the "
                                 "group's size; the relay never learns the group, its name or "
                                 "its members (docs/GROUPS.md).", no_args_is_help=True)

    def numbers(phones: list[str]) -> list[str]:
        return [parse_phone(phone) for phone in phones]

    @group_app.command("create")
    def create(name: NameArgument,
               phones: Annotated[list[str], typer.Argument(
                   metavar="PHONE...", help=f"The other members' numbers (at most "
                                            f"{MAX_GROUP_MEMBERS - 1}).",
                   show_default=False)]) -> None:
        """Create group NAME with this user and PHONE...; every member's devices are told."""
        members = numbers(phones)
        _change(kit, "created", lambda messenger: create_group(messenger, name, members))

    @group_app.command("add")
    def add(name: NameArgument, phone: PhoneArgument) -> None:
        """Add PHONE to group NAME: it reads what is sent from now on, nothing earlier."""
        member = parse_phone(phone)
        _change(kit, "added", lambda messenger: add_member(messenger, name, member))

    @group_app.command("remove")
    def remove(name: NameArgument, phone: PhoneArgument) -> None:
        """Remove PHONE from group NAME: new keys are made, and it reads nothing more."""
        member = parse_phone(phone)
        _change(kit, "removed", lambda messenger: remove_member(messenger, name, member))

    @group_app.command("send")
    def send(name: NameArgument,
             text: Annotated[str, typer.Argument(
                 metavar="TEXT", help=f"The message, at most {MAX_TEXT_BYTES} bytes of UTF-8.",
                 show_default=False)]) -> None:
        """Send TEXT to every member of group NAME (every device of each, and this user's
        other devices), end-to-end encrypted, in one upload. Prints one JSON line once the
        relay stored it: {"sent": true, "group": NAME, "devices": N, ...}."""
        if len(text.encode()) > MAX_TEXT_BYTES:
            kit.fail(f"the text is longer than {MAX_TEXT_BYTES} bytes")
        _change(kit, "sent", lambda messenger: send_group_text(messenger, name, text))

    @group_app.command("send-file")
    def send_file(name: NameArgument,
                  path: Annotated[Path, typer.Argument(
                      metavar="PATH", help="The file to send (the relay's limit applies: "
                                           "100 MiB by default).", show_default=False)]) -> None:
        """Send the file at PATH to every member of group NAME: encrypted with a fresh key as
        it is read and uploaded once, whatever the group's size; its key and digest then go
        to every member device in one group message, and each fetches the same copy. Prints
        one JSON line once the relay stored the message: {"sent": true, "group": NAME,
        "devices": N, ..., "name": FILE_NAME, "size": BYTES}. A progress bar shows on stderr
        when it is a terminal."""
        profile = kit.enrolled_profile()

        async def work() -> None:
            with transfer_bars(terminal=sys.stderr.isatty()) as progress:
                async with Messenger.connect(profile) as messenger:
                    receipt = await send_group_file(messenger, name, path, progress=progress)
            line = group_line("sent", receipt) | {"name": announced_name(path),
                                                  "size": path.stat().st_size}
            typer.echo(json.dumps(line, ensure_ascii=False))

        kit.run(work)

    @group_app.command("list")
    def list_groups() -> None:
        """List this device's groups as JSON lines: name and members' numbers (read from the
        profile, without connecting)."""
        profile = kit.enrolled_profile()

        async def work() -> None:
            await profile.lock.acquire()
            try:
                book = saved_groups(profile)
            finally:
                profile.lock.release()
            for group in sorted(book.groups.values(), key=lambda group: group.name):
                typer.echo(json.dumps({"group": group.name, "members": sorted(group.members)},
                                      ensure_ascii=False))

        kit.run(work)

    return group_app
