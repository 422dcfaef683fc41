"""The README's "Wake-up pushes" walkthrough, run as written after the main walkthrough (whose
profiles it uses), against a relay started with the settings the README gives."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import trio

from bench.spawn import spawn_relay
from tests.test_readme_walkthrough import README, WAIT_S, terminal_2_block

RUN_RELAY = "scripts/run-relay "


def push_section() -> tuple[list[str], str]:
    """The relay's extra arguments and the shell block of the "Wake-up pushes" section."""
    section = README.read_text().split("## Wake-up pushes", 1)[1].split("\n## ", 1)[0]
    relay_block, commands = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert relay_block.startswith(RUN_RELAY)
    return relay_block[len(RUN_RELAY):].split(), commands


async def test_the_readme_push_walkthrough_runs_as_written(tmp_path: Path) -> None:
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    relay_arguments, commands = push_section()
    async with spawn_relay(tmp_path / "cryptopass-data", *relay_arguments) as relay:
        script = terminal_2_block().replace("RELAY=127.0.0.1:4433",
                                            f"RELAY=127.0.0.1:{relay.port}") + commands
        environment = {name: value for name, value in os.environ.items()
                       if name not in {"VIRTUAL_ENV", "PYTHONHOME"}}
        with trio.fail_after(WAIT_S * 2):
            result = await trio.run_process(["bash", "-euo", "pipefail", "-c", script],
                                            cwd=tmp_path, env=environment, check=False,
                                            capture_stdout=True, capture_stderr=True)
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, stderr
    assert "Traceback" not in stderr
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert [line["text"] for line in lines if "text" in line] == ["hello", "live", "wake up"]
    outbox = [line for line in lines if line.get("provider") == "outbox"]
    assert len(outbox) == 2 and outbox[0]["token"] == outbox[1]["token"]
    assert lines[-1] == {"provider": None}
