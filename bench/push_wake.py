"""``cryptopass-bench offline --push``: how soon a device that is not connected is woken.

The bench plays the push service and the phones at once: a loopback Web Push receiver with one
subscription per recipient device (keys made here, as a browser makes them). Each recipient
registers its endpoint with the relay and disconnects; a sender then sends one message to each
(``--window`` in flight), and the time from the send to the wake-up's arrival at the receiver,
decrypted with that device's keys, is the wake latency. The relay under test must have its
``webpush`` provider on and loopback endpoints allowed; a relay the bench starts gets both.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.progress import progress_of
from bench.stats import latency_summary
from bench.stats import rate as rate_of
from client.connection import connect_relay, open_client_endpoint
from client.push import MAX_PUSH_BODY_BYTES, PushSubscription, WakeError, decrypt_wake

if TYPE_CHECKING:
    from bench.provision import BenchDevice
    from bench.target import Target
    from transport.quic import QuicEndpoint

__all__ = ["PUSH_RELAY_ARGS", "push_wakeups"]

PUSH_RELAY_ARGS = ("--set=push_webpush_subject=mailto:bench@localhost",
                   "--set=push_webpush_allow_loopback_http=true")
"""What a relay the bench starts needs to post wake-ups to the bench's loopback receiver."""
REGISTRATIONS_IN_FLIGHT = 8
"""Devices registering their push target at once (a handshake each)."""


@dataclass
class _Device:
    subscription: PushSubscription = field(default_factory=PushSubscription.new)
    path_secret: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    woken: trio.Event = field(default_factory=trio.Event)
    woken_at: float = 0.0
    wakes: int = 0


class WakeReceiver:
    """The push service and the phones behind it: one subscription per device."""

    def __init__(self, count: int) -> None:
        self.devices = [_Device() for _ in range(count)]
        self.base_url = ""
        self.refused = 0
        self.woken = 0

    def endpoint(self, index: int) -> str:
        return f"{self.base_url}/push/{index}/{self.devices[index].path_secret}"

    async def _receive(self, request: Request) -> Response:
        arrived = time.perf_counter()
        try:
            device = self.devices[int(request.path_params["index"])]
        except (ValueError, IndexError):
            return Response(status_code=404)
        if not hmac.compare_digest(request.path_params["secret"].encode(),
                                   device.path_secret.encode()):
            return Response(status_code=404)
        body = await request.body()
        try:
            if len(body) > MAX_PUSH_BODY_BYTES:
                raise WakeError("too large")
            decrypt_wake(body, device.subscription)
        except WakeError:
            self.refused += 1
            return Response(status_code=400)
        device.wakes += 1
        if not device.woken.is_set():
            device.woken_at = arrived
            self.woken += 1
            device.woken.set()
        return Response(status_code=201)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.graceful_timeout = 0.2
        app = Starlette(routes=[Route("/push/{index}/{secret}", self._receive,
                                      methods=["POST"])])
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(hypercorn_serve, app, config)
            self.base_url = "http://" + binds[0].rpartition("://")[2]
            task_status.started()


async def push_wakeups(target: Target, *, devices: int, window: int, size: int,
                       time_limit: float) -> dict[str, Any]:
    """Wake ``devices`` disconnected devices with one message each; the wake latencies."""
    sender, *recipients = await target.provisioner.provision(devices + 1)
    receiver = WakeReceiver(devices)
    errors: list[str] = []
    latencies_ms: list[float] = []
    seconds = 0.0
    async with trio.open_nursery() as services:
        await services.start(receiver.serve)
        async with open_client_endpoint(target.host) as endpoint:
            with trio.fail_after(time_limit):
                await _register_all(target, endpoint, receiver, recipients, errors)
            started = time.perf_counter()
            # A device never woken leaves the run at the time limit, counted as an error.
            with trio.move_on_after(time_limit):
                async with connect_relay(target.host, target.port, ca=target.ca,
                                         server_name="localhost", endpoint=endpoint) as client:
                    await client.authenticate(sender.user_id, sender.device_id, sender.key)
                    slots = trio.Semaphore(window)
                    payload = bytes(size)

                    async def send_and_wait(index: int, recipient: BenchDevice) -> None:
                        device = receiver.devices[index]
                        try:
                            sent_at = time.perf_counter()
                            await client.send(recipient.user_id,
                                              {recipient.device_id: payload},
                                              client_message_id=index)
                            await device.woken.wait()
                            latencies_ms.append((device.woken_at - sent_at) * 1000)
                        except Exception as error:  # counted and reported, never fatal
                            errors.append(str(error))
                        finally:
                            slots.release()

                    async with progress_of("woken", devices, lambda: receiver.woken), \
                            trio.open_nursery() as nursery:
                        for index, recipient in enumerate(recipients):
                            await slots.acquire()
                            nursery.start_soon(send_and_wait, index, recipient)
            seconds = time.perf_counter() - started
        services.cancel_scope.cancel()
    extra_wakes = sum(max(0, device.wakes - 1) for device in receiver.devices)
    return {"scenario": "offline-push", "devices": devices, "window": window, "size": size,
            "woken": receiver.woken, "seconds": round(seconds, 3),
            "pushes_per_second": rate_of(receiver.woken, seconds),
            "messages_per_second": rate_of(receiver.woken, seconds),
            "wake_latency_ms": latency_summary(latencies_ms),
            "extra_wakes": extra_wakes, "refused_pushes": receiver.refused,
            "errors": max(len(errors), devices - receiver.woken) + receiver.refused,
            "error_samples": errors[:5]}


async def _register_all(target: Target, endpoint: QuicEndpoint, receiver: WakeReceiver,
                        recipients: list[BenchDevice], errors: list[str]) -> None:
    """Each recipient registers its endpoint, then disconnects (it is then woken, not told)."""
    slots = trio.Semaphore(REGISTRATIONS_IN_FLIGHT)

    async def register(index: int, device: BenchDevice) -> None:
        async with slots:
            try:
                async with connect_relay(target.host, target.port, ca=target.ca,
                                         server_name="localhost", endpoint=endpoint) as client:
                    await client.authenticate(device.user_id, device.device_id, device.key)
                    subscription = receiver.devices[index].subscription
                    await client.set_push_target("webpush", receiver.endpoint(index),
                                                 p256dh=subscription.p256dh,
                                                 auth=subscription.auth)
            except Exception as error:  # counted and reported, never fatal
                errors.append(f"registering: {error}")

    async with trio.open_nursery() as nursery:
        for index, device in enumerate(recipients):
            nursery.start_soon(register, index, device)
