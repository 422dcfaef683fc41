"""The ``push`` commands and ``receive --push-wait`` of ``cryptopass`` (client/cli.py adds them):
how the relay wakes this device when it is not connected (docs/PUSH.md)."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Annotated, NoReturn

import trio
import typer

from client.connection import RelayError
from client.messenger import Messenger, ReceivedMessage
from client.profile import Profile
from client.push import (
    PushState,
    PushSubscription,
    forget_push_state,
    load_push_state,
    new_outbox_token,
    open_push_endpoint,
    save_push_state,
)
from wire.frames import ErrorCode

__all__ = ["PUSH_PROVIDERS", "CommandKit", "push_commands", "receive_push_wait"]

PUSH_PROVIDERS = ("outbox", "webpush", "fcm", "apns")


@dataclass(frozen=True)
class CommandKit:
    """What these commands borrow from client/cli.py, which owns how a command runs and fails."""

    run: Callable[[Callable[[], Awaitable[None]]], None]
    """Run the command's work under trio; errors become one ``error:`` line."""
    enrolled_profile: Callable[[], Profile]
    fail: Callable[[str], NoReturn]
    command: Callable[..., str]
    """A ``cryptopass --profile P WORDS...`` line to paste."""
    print_message: Callable[[ReceivedMessage], None]
    """Print one received message as ``receive`` does."""


def push_commands(kit: CommandKit) -> typer.Typer:
    """The ``push`` command group."""
    push_app = typer.Typer(help="Wake-up pushes: how the relay wakes this device when it is "
                                "not connected (docs/PUSH.md).", no_args_is_help=True)

    @push_app.command("set")
    def push_set(provider: Annotated[str, typer.Option(
                     help="outbox (development: the relay writes wake-ups to its "
                          "push-outbox.jsonl), webpush (a Web Push service's endpoint, "
                          "--endpoint), fcm or apns (the platform's device token, --token).",
                     show_default=False)],
                 endpoint: Annotated[str | None, typer.Option(
                     help="webpush: the push service's endpoint URL for this device.",
                     show_default=False)] = None,
                 token: Annotated[str | None, typer.Option(
                     help="fcm, apns: the device token the platform gave the app; outbox: an id "
                          "(default: a random one kept in the profile).",
                     show_default=False)] = None) -> None:
        """Register (or replace) the push target through which the relay wakes this device.

        For webpush, a new subscription key pair and auth secret are made here and their private
        part kept in the profile (push.json, 0600): only this device can read a wake-up.
        """
        if provider not in PUSH_PROVIDERS:
            kit.fail(f"unknown push provider {provider!r}: choose one of "
                     f"{', '.join(PUSH_PROVIDERS)}")
        if (provider == "webpush") != (endpoint is not None):
            kit.fail("--endpoint URL goes with --provider webpush, and only with it")
        if provider in ("fcm", "apns") and token is None:
            kit.fail(f"--provider {provider} needs --token: the device token the platform "
                     f"gave the app")
        profile = kit.enrolled_profile()
        subscription = PushSubscription.new() if endpoint is not None else None
        if endpoint is not None:
            state = PushState(provider="webpush", token=endpoint, subscription=subscription)
        else:
            saved = load_push_state(profile.directory)
            kept = saved.token if saved is not None and saved.provider == "outbox" else None
            state = PushState(provider=provider, token=token or kept or new_outbox_token())

        async def work() -> None:
            async with Messenger.connect(profile) as messenger:
                await messenger.client.set_push_target(
                    state.provider, state.token,
                    p256dh=subscription.p256dh if subscription else None,
                    auth=subscription.auth if subscription else None)
                save_push_state(profile.directory, state)
            typer.echo(json.dumps({"provider": state.provider, "token": state.token}))

        kit.run(work)


    @push_app.command("show")
    def push_show() -> None:
        """Print the push target the relay holds for this device, as a JSON line."""
        profile = kit.enrolled_profile()

        async def work() -> None:
            async with Messenger.connect(profile) as messenger:
                target = await messenger.client.get_push_target()
            if target is None:
                typer.echo(json.dumps({"provider": None}))
                return
            saved = load_push_state(profile.directory)
            typer.echo(json.dumps({"provider": target[0], "token": target[1],
                                   "keys_in_profile": saved is not None
                                   and saved.subscription is not None
                                   and saved.token == target[1]}))

        kit.run(work)


    @push_app.command("clear")
    def push_clear() -> None:
        """Remove this device's push target: the relay no longer wakes it."""
        profile = kit.enrolled_profile()

        async def work() -> None:
            async with Messenger.connect(profile) as messenger:
                await messenger.client.clear_push_target()
            forget_push_state(profile.directory)
            typer.echo(json.dumps({"provider": None}))

        kit.run(work)

    return push_app


def receive_push_wait(kit: CommandKit, profile: Profile, listen: str, *, count: int | None,
                      timeout: float | None) -> None:
    """``receive --push-wait``: the whole wake-up cycle of a phone, in a terminal."""

    async def drain(messenger: Messenger, received: int) -> int:
        async with aclosing(messenger.messages(stop_when_empty=True)) as messages:
            async for message in messages:
                kit.print_message(message)
                received += 1
                if count is not None and received >= count:
                    break
        return received

    async def work() -> None:
        with trio.move_on_after(timeout if timeout is not None else float("inf")) as waiting:
            await cycle()
        if waiting.cancelled_caught:
            typer.echo(f"error: no wake-up within {timeout:g} s (the push target stays "
                       f"registered; `{kit.command('push', 'clear')}` removes it)", err=True)
            sys.exit(1)

    async def cycle() -> None:
        async with open_push_endpoint(listen) as endpoint:
            subscription = endpoint.subscription
            async with Messenger.connect(profile) as messenger:
                try:
                    await messenger.client.set_push_target(
                        "webpush", endpoint.url, p256dh=subscription.p256dh,
                        auth=subscription.auth)
                except RelayError as error:
                    if error.code not in (ErrorCode.INVALID_PUSH_TARGET,
                                          ErrorCode.PUSH_PROVIDER_UNAVAILABLE):
                        raise
                    kit.fail(f"the relay refused this command's loopback Web Push endpoint "
                          f"({error.code.name}: {error.reason}); --push-wait needs a relay "
                          f"with push_webpush_subject set and "
                          f"push_webpush_allow_loopback_http = true (docs/PUSH.md)")
                save_push_state(profile.directory, PushState(
                    provider="webpush", token=endpoint.url, subscription=subscription))
                received = await drain(messenger, 0)
                if count is not None and received >= count:  # no need to wait at all
                    await messenger.client.clear_push_target()
                    forget_push_state(profile.directory)
                    return
            wakes = 0
            try:
                while count is None or received < count:
                    typer.echo(f"Waiting for a wake-up push on {endpoint.address} "
                               f"(disconnected) ...", err=True)
                    await endpoint.wait(wakes + 1)
                    wakes = endpoint.wakes
                    typer.echo("Woken: connecting to fetch what arrived.", err=True)
                    async with Messenger.connect(profile) as messenger:
                        received = await drain(messenger, received)
                        if count is None or received >= count:
                            # The endpoint ends with this command: a target left behind
                            # would have the relay retry a closed port.
                            await messenger.client.clear_push_target()
                            forget_push_state(profile.directory)
                            break
            finally:
                if endpoint.refused:
                    typer.echo(f"warning: {endpoint.refused} request(s) to the endpoint "
                               f"were not wake-ups of this subscription", err=True)

    kit.run(work)
