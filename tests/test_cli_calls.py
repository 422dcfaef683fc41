"""``cryptopass call`` and ``receive --follow --accept-calls`` as users run them: one process
per device against a real relay subprocess, real QUIC, real datagrams."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from tests.test_cli_encryption import Cli, declare
from tests.test_cli_scenario import BIN, free_udp_port, start_relay

ALICE, BOB, CAROL = "+33612345678", "+33698765432", "+33611111111"


class Answering:
    """``receive --follow --accept-calls`` for one profile, and the lines it printed."""

    def __init__(self) -> None:
        self.lines: list[dict[str, object]] = []
        self._changed = trio.Event()

    async def read(self, stream: trio.abc.ReceiveStream) -> None:
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            self.lines.extend(json.loads(line) for line in complete if line)
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, count: int, kind: str) -> None:
        """Until ``count`` lines of ``{"call": kind}`` were printed."""
        while sum(line.get("call") == kind for line in self.lines) < count:
            await self._changed.wait()

    async def wait_for_text(self, text: str) -> None:
        """Until a message line with ``text`` was printed."""
        while not any(line.get("text") == text for line in self.lines):
            await self._changed.wait()


@asynccontextmanager
async def answering(cli: Cli, name: str) -> AsyncIterator[Answering]:
    """``receive --follow --accept-calls`` for ``name`` until the block ends."""
    answerer = Answering()
    async with trio.open_nursery() as nursery:
        process = await trio.lowlevel.open_process(
            [str(BIN / "cryptopass"), "--profile", cli.profile(name), "receive", "--follow",
             "--accept-calls"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert process.stdout is not None
        nursery.start_soon(answerer.read, process.stdout)
        try:
            yield answerer
        finally:
            process.terminate()
            with trio.move_on_after(30):
                await process.wait()
            if process.returncode is None:
                process.kill()


async def call(cli: Cli, name: str, *args: str) -> dict[str, object]:
    """Run ``cryptopass call`` to completion; its one JSON object."""
    with trio.fail_after(120):
        result = await trio.run_process(
            [str(BIN / "cryptopass"), "--profile", cli.profile(name), "call", *args],
            capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 1, lines
    parsed: dict[str, object] = json.loads(lines[0])
    return parsed


async def test_a_call_and_a_group_call_are_answered_echoed_and_measured(
        tmp_path: Path) -> None:
    data = tmp_path / "D"
    await declare(data, ALICE, BOB, CAROL)
    port = free_udp_port()
    async with trio.open_nursery() as nursery:
        cli = Cli(tmp_path, await start_relay(nursery, data, port), port)
        for name, phone in (("A", ALICE), ("B", BOB), ("C", CAROL)):
            await cli.enrol(name, phone)

        refused = await cli.refused("--profile", cli.profile("A"), "call", CAROL,
                                    "--seconds", "0.1", "--answer-timeout", "1")
        assert "no answer from +33611111111 within 1 s" in refused

        async with answering(cli, "B") as bob, answering(cli, "C") as carol:
            result = await call(cli, "A", BOB, "--seconds", "1")
            assert result["to"] == [BOB] and result["peers"] == 1
            assert result["packets_sent"] == 50
            assert 0 < int(str(result["packets_received"])) <= 50
            assert result["undecryptable"] == 0
            for figure in ("loss", "jitter_ms", "round_trip_p50_ms", "one_way_delay_ms"):
                assert isinstance(result[figure], float | int), figure

            group = await call(cli, "A", "--group", f"{BOB},{CAROL}", "--seconds", "1")
            assert group["to"] == [BOB, CAROL] and group["peers"] == 2
            assert group["packets_sent"] == 50
            assert 50 < int(str(group["packets_received"])) <= 100  # both echoed
            with trio.fail_after(60):  # the caller hung up: both stop echoing and say so
                await bob.wait_for(2, "ended")
                await carol.wait_for(1, "ended")
        answered = [line for line in bob.lines if line["call"] == "answered"]
        assert [line["group"] for line in answered] == [False, True]
        assert all(line["undecryptable"] == 0 for line in bob.lines + carol.lines
                   if line["call"] == "ended"), (bob.lines, carol.lines)
        nursery.cancel_scope.cancel()


async def test_bad_call_arguments_are_refused_before_connecting(tmp_path: Path) -> None:
    data = tmp_path / "D"
    await declare(data, ALICE)
    port = free_udp_port()
    async with trio.open_nursery() as nursery:
        cli = Cli(tmp_path, await start_relay(nursery, data, port), port)
        await cli.enrol("A", ALICE)
        profile = cli.profile("A")
        assert "give either PHONE or --group" in await cli.refused("--profile", profile, "call")
        assert "give either PHONE or --group" in await cli.refused(
            "--profile", profile, "call", BOB, "--group", f"{BOB},{CAROL}")
        assert "2 to 7 numbers" in await cli.refused("--profile", profile, "call",
                                                      "--group", BOB)
        assert "not this device's own" in await cli.refused(
            "--profile", profile, "call", "--group", f"{BOB},{ALICE}")
        assert "invalid phone number" in await cli.refused("--profile", profile, "call",
                                                            "0612")
        nursery.cancel_scope.cancel()
