"""One load-generator process of a multi-process ``live`` run, started by
`bench.worker_pool` as ``cryptopass-bench internal live-worker`` (bench/internal.py).

The conversation with the parent (`bench.worker_pool`), one line at a time:

- standard input: the settings as one JSON line, then ``go`` each time every worker
  reached the phase this one announced;
- standard output: ``phase NAME`` on reaching a phase (``published``, ``start``), then
  the `LiveResult` as one JSON line.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import trio

from bench.live import LiveConfig, run_live
from bench.live_link import LiveResult
from bench.provision import BenchDevice

__all__ = ["GO", "PHASE_PREFIX", "main"]

PHASE_PREFIX = "phase "
GO = "go"


async def _run(config: LiveConfig) -> LiveResult:
    commands = trio.wrap_file(sys.stdin)

    async def synchronise(phase: str) -> None:
        print(f"{PHASE_PREFIX}{phase}", flush=True)
        if (await commands.readline()).strip() != GO:
            raise RuntimeError(f"the parent went away at phase {phase}")

    return await run_live(config, synchronise=synchronise)


def main() -> None:
    request = json.loads(sys.stdin.readline())
    config = LiveConfig(
        host=request["host"], port=request["port"],
        ca=Path(request["ca"]) if request["ca"] else None,
        devices=tuple(BenchDevice.from_json(device) for device in request["devices"]),
        local=tuple(request["local"]), messages=request["messages"], size=request["size"],
        rate=request["rate"], window=request["window"], seed=request["seed"],
        encrypted=request["encrypted"], timeout=request["timeout"])
    result = trio.run(_run, config)
    print(json.dumps(asdict(result)), flush=True)
