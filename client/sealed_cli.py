"""The ``delivery-token`` commands of ``cryptopass`` (client/cli.py adds them): who may send
this account sealed messages (docs/PRIVACY.md, "Sealed sender").

- ``show``: the mode, whether a profile key exists, its generation, how many contacts hold it,
  and the pinned relay keys (never the key or the token themselves).
- ``off``: organisation mode: tokens are switched off, any device of this account's
  organisation may send sealed (from its own, authenticated connection).
- ``on``: back to tokens: only contacts holding the profile key send sealed.
- ``rotate``: a new profile key; the relay refuses the old token from then on, and the new key
  goes to this account's other devices and to every contact that had the old one.
"""

from __future__ import annotations

import json

import typer

from client.messenger import Messenger
from client.push_cli import CommandKit

__all__ = ["delivery_token_commands"]


def delivery_token_commands(kit: CommandKit) -> typer.Typer:
    """The ``delivery-token`` command group."""
    token_app = typer.Typer(help="Sealed sender: who may send this account messages the relay "
                                 "cannot attribute (docs/PRIVACY.md).", no_args_is_help=True)

    @token_app.command("show")
    def show() -> None:
        """Print the delivery-token settings as one JSON line (no key or token)."""
        profile = kit.enrolled_profile()

        async def work() -> None:
            async with Messenger.connect(profile) as messenger:
                settings = messenger.sealed
                holders = sum(1 for contact in messenger.contacts.values()
                              if contact.shared_profile_key is not None
                              and contact.shared_profile_key == settings.profile_key)
                typer.echo(json.dumps({
                    "mode": settings.mode, "profile_key": settings.profile_key is not None,
                    "generation": settings.generation, "contacts_holding_it": holders,
                    "relay_keys": [{"key_id": key.key_id, "public_key": key.public_key.hex()}
                                   for key in settings.relay_keys]}))

        kit.run(work)

    @token_app.command("off")
    def off() -> None:
        """Switch tokens off (organisation mode): any device of this account's organisation
        may send sealed, from its own authenticated connection."""
        _set_mode(kit, "organisation")

    @token_app.command("on")
    def on() -> None:
        """Switch tokens back on: only contacts holding this account's profile key send
        sealed."""
        _set_mode(kit, "token")

    @token_app.command("rotate")
    def rotate() -> None:
        """Make a new profile key: the relay refuses the old token from now on; the new one
        goes to this account's other devices and to every contact that had the old one."""
        profile = kit.enrolled_profile()

        async def work() -> None:
            async with Messenger.connect(profile) as messenger:
                shared = await messenger.rotate_profile_key()
                typer.echo(json.dumps({"rotated": True, "generation": messenger.sealed.generation,
                                       "contacts_told": shared}))

        kit.run(work)

    return token_app


def _set_mode(kit: CommandKit, mode: str) -> None:
    profile = kit.enrolled_profile()

    async def work() -> None:
        async with Messenger.connect(profile) as messenger:
            await messenger.set_delivery_mode(mode)
            typer.echo(json.dumps({"mode": mode}))

    kit.run(work)
