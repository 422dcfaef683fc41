"""The README's walkthrough ("Two terminals, two phones"), run as written.

Terminal 1's `scripts/run-relay` is replaced by a relay of the test's own, on a free port; the
terminal 2 block is taken from README.md and run in bash, unchanged but for that port, from a
folder laid out like the repository root (`.venv`, and the relay's `cryptopass-data`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import trio

from bench.spawn import spawn_relay

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
WAIT_S = 120
"""Bound on the whole walkthrough (it enrols two devices and exchanges messages)."""


def terminal_2_block() -> str:
    """The shell block of the walkthrough that starts with `source .venv/bin/activate`."""
    section = README.read_text().split("## Two terminals, two phones", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    (block,) = [block for block in blocks if block.startswith("source .venv/bin/activate")]
    return block


def test_the_walkthrough_names_the_default_relay_address_once() -> None:
    assert terminal_2_block().count("RELAY=127.0.0.1:4433") == 1


async def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    async with spawn_relay(tmp_path / "cryptopass-data") as relay:
        script = terminal_2_block().replace("RELAY=127.0.0.1:4433",
                                            f"RELAY=127.0.0.1:{relay.port}")
        environment = {name: value for name, value in os.environ.items()
                       if name not in {"VIRTUAL_ENV", "PYTHONHOME"}}
        with trio.fail_after(WAIT_S):
            result = await trio.run_process(["bash", "-euo", "pipefail", "-c", script],
                                            cwd=tmp_path, env=environment, check=False,
                                            capture_stdout=True, capture_stderr=True)
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, stderr
    assert "Traceback" not in stderr
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    received = [line for line in lines if "text" in line]
    assert [message["text"] for message in received] == ["hello", "live"]
    assert {message["from"] for message in received} == {"+33612345678"}
    safety_numbers = [line for line in stdout.splitlines() if re.fullmatch(r"[0-9 ]{60,}", line)]
    assert len(safety_numbers) == 2 and safety_numbers[0] == safety_numbers[1]
    [device] = [line for line in lines if "device_id" in line and "text" not in line]
    assert (device["device_id"], device["this_device"], device["list_version"]) == (1, True, 1)
