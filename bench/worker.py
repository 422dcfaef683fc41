"""One load-generator process of a multi-process ``live`` run.

Reads its settings as JSON on standard input, drives its slice of the
devices, and writes its ``LiveResult`` as JSON on standard output.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import trio

from bench.live import LiveConfig, run_live
from bench.provision import BenchDevice


def main() -> None:
    request = json.load(sys.stdin)
    config = LiveConfig(
        host=request["host"], port=request["port"],
        ca=Path(request["ca"]) if request["ca"] else None,
        devices=tuple(BenchDevice.from_json(device) for device in request["devices"]),
        local=tuple(request["local"]), messages=request["messages"], size=request["size"],
        rate=request["rate"], window=request["window"], seed=request["seed"],
        start_at_ns=request["start_at_ns"], timeout=request["timeout"])
    result = trio.run(run_live, config)
    json.dump(asdict(result), sys.stdout)


if __name__ == "__main__":
    main()
