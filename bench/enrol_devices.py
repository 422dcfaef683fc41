"""Enrolling bench devices over QUIC as a phone does: start, SMS code, verify.

The code comes from a ``CodeSource``: the SMS outbox of a relay the bench started
(``OutboxCodes``) or the bench's own SMS webhook (bench/sms_webhook.py).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import trio
from nacl.signing import SigningKey

from bench.provision import BenchDevice
from bench.spawn import DEFAULT_WAIT_SECONDS, SpawnedRelay
from client.connection import connect_relay, open_client_endpoint
from crypto.primitives import SystemRandom, ed25519_generate

__all__ = ["CODE_PATTERN", "CodeSource", "EnrolOutcome", "OutboxCodes", "enrol_phones"]

CODE_PATTERN = re.compile(r"\b(\d{6})\b")
"""The verification code in an SMS body (enrolment/codes.py makes six digits)."""

SEED_BYTES = 32
"""An Ed25519 private key seed."""


class CodeSource(Protocol):
    """Where the bench reads the verification code the relay sent to a number."""

    def expect(self, phone: str) -> None:
        """Keep the next code sent to ``phone``: called before asking the relay to send
        one (the SMS may arrive before the relay's answer to the request)."""
        ...

    async def code_for(self, phone: str) -> str:
        """The code sent to ``phone``, once the relay has sent it.

        Raises:
            trio.TooSlowError: no code arrived in time.
        """
        ...


class OutboxCodes:
    """Codes from the SMS outbox (``DATA_DIR/sms-outbox.jsonl``) of a relay the bench or a
    test started.

    The relay logs ``sms_sent`` after each line it appends: the bench rereads the
    file when the relay's log moves, rather than polling it. Only lines appended after
    ``expect`` count, so a number enrolled again gets its new code.
    """

    def __init__(self, relay: SpawnedRelay) -> None:
        self.relay = relay
        self._skipped: dict[str, int] = {}
        """Per number: outbox lines written before its code was asked for."""

    def _lines(self) -> list[str]:
        outbox = self.relay.outbox
        return outbox.read_text().splitlines() if outbox.exists() else []

    def expect(self, phone: str) -> None:
        self._skipped[phone] = len(self._lines())

    def _read(self, phone: str) -> str | None:
        for line in reversed(self._lines()[self._skipped.get(phone, 0):]):
            message = json.loads(line)
            match = CODE_PATTERN.search(message["body"])
            if message["to"] == phone and match:
                return match.group(1)
        return None

    async def code_for(self, phone: str) -> str:
        with trio.fail_after(DEFAULT_WAIT_SECONDS):
            while True:
                changed = self.relay.changed  # taken first: a line written meanwhile wakes us
                code = self._read(phone)
                if code is not None:
                    return code
                if self.relay.process.returncode is not None:
                    raise RuntimeError("the relay exited before sending the SMS")
                await changed.wait()


def _first_leaf(error: BaseException) -> BaseException:
    """The first exception inside nurseries' groups (the one worth reporting)."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


@dataclass
class EnrolOutcome:
    devices: list[BenchDevice] = field(default_factory=list)
    """Enrolled devices, in the order of the numbers."""
    errors: list[str] = field(default_factory=list)
    """One ``Type: reason`` per failed enrolment (never a number or a code)."""


async def enrol_phones(host: str, port: int, ca: Path | None, phones: Sequence[str],
                       codes: CodeSource, *, concurrency: int) -> EnrolOutcome:
    """Enrol one fresh device (new Ed25519 key) per declared number, ``concurrency`` at once.

    Failures are counted in the outcome, never raised: the caller decides.
    """
    enrolled: dict[str, BenchDevice] = {}
    outcome = EnrolOutcome()
    limiter = trio.CapacityLimiter(concurrency)

    async with open_client_endpoint(host) as endpoint:
        async def enrol_one(phone: str) -> None:
            async with limiter:
                seed = secrets.token_bytes(SEED_BYTES)
                try:
                    async with connect_relay(host, port, ca=ca, server_name="localhost",
                                             endpoint=endpoint) as client:
                        codes.expect(phone)
                        await client.enrol_start(phone)
                        code = await codes.code_for(phone)
                        answer = await client.enrol_verify(
                            phone, code, SigningKey(seed).verify_key.encode(),
                            ed25519_generate(SystemRandom()))
                except Exception as error:  # counted and reported
                    cause = _first_leaf(error)
                    outcome.errors.append(f"{type(cause).__name__}: {cause}")
                    return
                enrolled[phone] = BenchDevice(phone=phone, user_id=answer.user_id,
                                              device_id=answer.device_id, seed=seed)

        async with trio.open_nursery() as nursery:
            for phone in phones:
                nursery.start_soon(enrol_one, phone)
    outcome.devices = [enrolled[phone] for phone in phones if phone in enrolled]
    return outcome
