"""``transport --forward``: the ``live`` load against a server that only forwards.

The echo ceiling (bench/transport.py) answers each frame on the connection it came in on; a
relayed message crosses two connections (SEND and SEND_ACCEPTED on the sender's, DELIVER and
the acknowledgement on the recipient's), so it costs more packets than an echo whatever the
relay does. This ceiling has the relay's traffic shape: the same ``live`` scenario
(bench/scenarios.py), the same client library and devices, against bench/forward_server.py,
which forwards each SEND as a DELIVER and keeps nothing. Its result has exactly ``live``'s
fields (``scenario`` says ``forward``); ``compare`` runs the relay's ``live`` with the same
options next and adds the relay/ceiling ratios, as the echo ceiling's ``--compare`` does.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from bench import scenarios
from bench.provision import BenchDevice, bench_phone
from bench.provisioners import PHONE_INDEX_SPACE
from bench.spawn import BIN, SpawnedServer, spawn_server
from bench.target import Target, TargetOptions, open_target
from bench.transport import with_relay
from enrolment.admin import USER_ID_BYTES

__all__ = ["ForwardProvisioner", "open_forward_target", "run_forward"]

FORWARD_DEVICE_ID = 1
"""Each bench user's one device (the id enrolment gives a user's first device)."""

SEED_BYTES = 32
"""An Ed25519 private key's seed."""


class ForwardProvisioner:
    """``Provisioner`` for the forward server, which knows no store: devices are made up
    (a random user id, a fresh Ed25519 key) and admitted by the server as they connect."""

    async def declare(self, phones: Sequence[str]) -> None:
        """Nothing to declare: the forward server enrols no one (it has no ``codes`` either,
        so ``enrol`` is refused before it would get here)."""

    async def provision(self, count: int) -> list[BenchDevice]:
        first_index = secrets.randbelow(PHONE_INDEX_SPACE - count + 1)
        return [BenchDevice(phone=bench_phone(index), user_id=secrets.token_hex(USER_ID_BYTES),
                            device_id=FORWARD_DEVICE_ID, seed=secrets.token_bytes(SEED_BYTES))
                for index in range(first_index, first_index + count)]


@asynccontextmanager
async def open_forward_target(*, relay_cpu: int | None) -> AsyncIterator[Target]:
    """The forward server in a process of its own (pinned to ``relay_cpu``), as a ``Target``
    whose ``server`` is measured as a spawned relay's is."""
    with tempfile.TemporaryDirectory(prefix="cryptopass-forward-") as temporary:
        command = [str(BIN / "cryptopass-bench"), "internal", "forward-server", temporary]
        async with spawn_server(command, cpu=relay_cpu, make=_spawned) as server:
            listening = await server.wait_for("relay_listening")
            server.cert = Path(str(listening["cert"]))
            yield Target(host="127.0.0.1", port=server.port, ca=server.cert,
                         provisioner=ForwardProvisioner(), codes=None, server=server)


async def run_forward(*, devices: int, messages: int, size: int, window: int, rate: float,
                      time_limit: float, compare: bool,
                      relay_cpu: int | None) -> dict[str, Any]:
    """The forward ceiling under ``live``'s load, and (``compare``) the relay under the same
    load with the ratios."""

    async def live_on(target: Target) -> dict[str, Any]:
        return await scenarios.live(target, devices=devices, messages=messages, size=size,
                                    rate=rate, window=window, processes=1,
                                    time_limit=time_limit)

    async with open_forward_target(relay_cpu=relay_cpu) as target:
        ceiling = {**await live_on(target), "scenario": "forward"}
    if not compare:
        return ceiling
    async with open_target(TargetOptions(relay_cpu=relay_cpu)) as target:
        relay = await live_on(target)
    return with_relay(ceiling, relay)


def _spawned(process: trio.Process) -> SpawnedServer:
    return SpawnedServer(process=process)
