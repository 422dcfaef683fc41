"""deploy/cryptopass-relay.service: systemd accepts it without a warning (``systemd-analyze
verify``), it scores "OK" or better (``systemd-analyze security --offline=true``), and the relay
really runs under the rules it sets that could break it: MemoryDenyWriteExecute, and SIGHUP /
SIGTERM as ExecReload= and KillSignal= send them.

``verify`` checks that ExecStart= and ExecReload= name executables, so it runs in a throw-away
root holding a stub at the unit's ExecStart path, ``/bin/kill``, and the host's stock units (the
unit names sysinit.target and friends); the unit file itself is the repository's, unchanged.
Without ``systemd-analyze`` these tests fail: scripts/run-tests installs Debian's ``systemd``.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

from bench.spawn import BIN, SpawnedRelay, spawn_server
from relay.lifecycle import STOP_DEADLINE_SECONDS
from tests.relay_processes import connect, declare, enrol
from wire.frames import Deliver

UNIT = Path(__file__).resolve().parent.parent / "deploy" / "cryptopass-relay.service"
WAIT_S = 30
"""Bound on anything that could hang, not a timing assertion."""
PHONE_A, PHONE_B = "+33612345678", "+33698765432"
ACCEPTED_LEVELS = ("PERFECT", "SAFE", "OK")
"""systemd-analyze's exposure levels that are "OK" or better (then MEDIUM, EXPOSED, UNSAFE)."""

PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
MDWE_LAUNCHER = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
    sys.exit(f"prctl(PR_SET_MDWE) failed: errno {{ctypes.get_errno()}}")
os.execv(sys.argv[1], sys.argv[1:])
"""
"""Run argv[1:] under the kernel's memory-deny-write-execute (Linux 6.3+; kept across exec):
no mapping both writable and executable, none made executable later. It is the kernel's form
of the unit's MemoryDenyWriteExecute=yes (systemd's own is a seccomp filter refusing the same
mmap/mprotect calls)."""


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is missing: install Debian's systemd "
                    "(apt-get install --no-install-recommends systemd; scripts/run-tests does)")
    return found


def unit_value(key: str) -> str:
    """The value of the unit's one ``key=`` line."""
    (value,) = re.findall(rf"^{key}=(.*)$", UNIT.read_text(), re.MULTILINE)
    return value


def verify_in_root(root: Path, unit_text: str, *, stub_exec_start: bool = True
                   ) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on ``unit_text`` in a root holding what it names."""
    units = next(path for path in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
                 if path.is_dir())
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "bin").mkdir()
    shutil.copy(Path("/bin/kill").resolve(), root / "bin" / "kill")
    if stub_exec_start:
        executable = root / unit_value("ExecStart").split()[0].lstrip("/")
        executable.parent.mkdir(parents=True)
        executable.write_text("#!/bin/sh\nexit 0\n")
        executable.chmod(0o755)
    placed = root / "etc/systemd/system/cryptopass-relay.service"
    placed.parent.mkdir(parents=True)
    placed.write_text(unit_text)
    return subprocess.run([systemd_analyze(), "verify", f"--root={root}", "--man=no",
                           "--generators=no", str(placed)],
                          capture_output=True, text=True, timeout=WAIT_S, check=False)


def test_systemd_verify_accepts_the_unit_without_a_warning(tmp_path: Path) -> None:
    result = verify_in_root(tmp_path, UNIT.read_text())
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_as_run_here_reports_mistakes(tmp_path: Path) -> None:
    # verify exits 0 on an unknown key ("ignoring"): the output is what tells.
    misspelt = UNIT.read_text().replace("KillMode=mixed", "KilMode=mixed")
    flagged = verify_in_root(tmp_path / "misspelt", misspelt)
    assert "Unknown key 'KilMode'" in flagged.stderr
    missing = verify_in_root(tmp_path / "missing", UNIT.read_text(), stub_exec_start=False)
    assert missing.returncode != 0
    assert "is not executable" in missing.stderr


def test_security_exposure_is_ok_or_better() -> None:
    result = subprocess.run([systemd_analyze(), "security", "--offline=true", str(UNIT)],
                            capture_output=True, text=True, timeout=WAIT_S, check=False)
    overall = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", result.stdout)
    assert overall is not None, result.stdout + result.stderr
    score, level = float(overall[1]), overall[2]
    assert level in ACCEPTED_LEVELS, (score, level)
    assert score <= 1.5, f"exposure {score}: docs/OPERATIONS.md and the unit say 1.1"


def test_the_unit_sends_the_signals_the_relay_handles() -> None:
    """ExecReload= is SIGHUP (certificate reload), KillSignal= SIGTERM (drain), and systemd
    waits longer than the relay's drain before SIGKILL (tests/test_lifecycle.py runs both)."""
    assert unit_value("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert unit_value("KillSignal") == "SIGTERM"
    assert unit_value("KillMode") == "mixed"  # --workers: serve passes SIGTERM on itself
    assert float(unit_value("TimeoutStopSec")) > STOP_DEADLINE_SECONDS + 5
    assert unit_value("MemoryDenyWriteExecute") == "yes"
    assert unit_value("CapabilityBoundingSet") == ""
    assert "--data-dir %S/cryptopass-relay" in unit_value("ExecStart")
    assert unit_value("StateDirectory") == "cryptopass-relay"


def test_the_mdwe_launcher_really_refuses_writable_executable_memory() -> None:
    probe = ("import mmap\n"
             "try:\n"
             "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
             "except PermissionError:\n"
             "    raise SystemExit(0)\n"
             "raise SystemExit('a writable executable mapping was allowed')\n")
    result = subprocess.run([sys.executable, "-c", MDWE_LAUNCHER, sys.executable, "-c", probe],
                            capture_output=True, text=True, timeout=WAIT_S, check=False)
    assert (result.returncode, result.stderr) == (0, "")


async def test_the_relay_serves_reloads_and_drains_under_memory_deny_write_execute(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    await declare(None, data_dir, (PHONE_A, PHONE_B), organisation="acme")
    command = [sys.executable, "-c", MDWE_LAUNCHER, str(BIN / "cryptopass-relay"), "serve",
               "--data-dir", str(data_dir), "--listen", "127.0.0.1:0"]
    async with spawn_server(command, cert=data_dir / "tls" / "cert.pem",
                            make=lambda process: SpawnedRelay(process=process,
                                                              data_dir=data_dir)) as relay:
        device_a, device_b = await enrol(relay, PHONE_A), await enrol(relay, PHONE_B)
        async with AsyncExitStack() as stack:
            client_a = await stack.enter_async_context(connect(relay))
            await client_a.authenticate(device_a.user_id, device_a.device_id, device_a.key)
            client_b = await stack.enter_async_context(connect(relay))
            await client_b.authenticate(device_b.user_id, device_b.device_id, device_b.key)
            deliveries = client_b.deliveries()
            await client_a.send(device_b.user_id, {device_b.device_id: b"hello"},
                                client_message_id=1)
            with trio.fail_after(WAIT_S):
                delivered = await deliveries.__anext__()
                while not isinstance(delivered, Deliver):
                    delivered = await deliveries.__anext__()
            assert delivered.ciphertext == b"hello"
            client_b.acknowledge(delivered.envelope_id)
            await client_b.settle()
        relay.process.send_signal(signal.SIGHUP)  # what ExecReload= sends
        await relay.wait_for("certificate_reloaded")
        relay.process.send_signal(signal.SIGTERM)  # what KillSignal= sends
        with trio.fail_after(WAIT_S):
            assert await relay.process.wait() == 0
    assert not [event for event in relay.events if event.get("level") == "error"]
