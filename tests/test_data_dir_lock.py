"""A data directory belongs to one relay: ``DATA_DIR/relay.lock``, with real processes.

A second ``serve`` on a directory in use is refused at once (one line naming the directory
and the holder's PID, exit 1) and leaves the first relay's control socket alone; ``restore``
is refused while a relay holds the lock, even after another relay was refused; the lock is
freed when the relay stops, and by the kernel when it is killed; with ``--workers`` the
supervisor holds it for its workers. Then the lock itself, in this process.
"""

from __future__ import annotations

import fcntl
import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from bench.spawn import BIN, SpawnedRelay, spawn_relay
from relay.control import notify_relay
from relay.data_dir import DataDirectoryInUse, inherit_data_dir_lock, lock_data_dir
from relay.server import serve
from relay.settings import RelaySettings
from storage.sqlite import open_sqlite_store
from tests.postgres_schemas import fresh_schema, store_url

WAIT_S = 60
"""Bound on a relay process starting and exiting (interpreter start included): not a
timing assertion."""

LOCK_NAME = "relay.lock"
SOCKET_NAME = "relay.sock"


@dataclass
class Attempt:
    """How a ``serve`` expected to be refused ended."""

    status: int
    stderr: str
    started: bool
    """It listened (and was then stopped with SIGTERM, as an operator would)."""


async def another_relay(data_dir: Path) -> Attempt:
    """``serve`` on ``data_dir`` once more, to its end. Should it start listening, it is
    stopped with SIGTERM, which is how the second relay of the bug report went away."""
    process = await trio.lowlevel.open_process(
        [str(BIN / "cryptopass-relay"), "serve", "--data-dir", str(data_dir),
         "--listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stderr is not None
    output = b""
    started = False
    try:
        with trio.fail_after(WAIT_S):
            async for chunk in process.stderr:
                output += chunk
                if not started and b'"relay_listening"' in output:
                    started = True
                    process.terminate()
            status = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    return Attempt(status=status, stderr=output.decode(), started=started)


async def relay_command(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(WAIT_S):
        return await trio.run_process([str(BIN / "cryptopass-relay"), *args],
                                      capture_stdout=True, capture_stderr=True, check=False)


async def answers_on_control_socket(data_dir: Path) -> bool:
    """Whether a relay answers on ``DATA_DIR/relay.sock`` (an unknown operation gets an
    answer too: what matters is that the socket reaches a live relay)."""
    with trio.fail_after(WAIT_S):
        return await notify_relay(data_dir, {"op": "ping"}) is not None


@contextmanager
def lock_file(data_dir: Path) -> Iterator[int]:
    """The lock file opened as another process would (it must exist)."""
    descriptor = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
    try:
        yield descriptor
    finally:
        os.close(descriptor)


def is_locked(data_dir: Path) -> bool:
    with lock_file(data_dir) as descriptor:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False  # closing the descriptor lets go of it again


async def wait_until_free(data_dir: Path) -> None:
    """Take the lock, waiting in the kernel (not polling) until its holders are gone."""
    with lock_file(data_dir) as descriptor:
        with trio.fail_after(WAIT_S):
            await trio.to_thread.run_sync(fcntl.flock, descriptor, fcntl.LOCK_EX,
                                          abandon_on_cancel=True)


def assert_refused(attempt: Attempt, data_dir: Path, holder: int) -> None:
    assert not attempt.started, "a second relay served the data directory"
    assert attempt.status == 1, attempt.stderr
    assert "Traceback" not in attempt.stderr
    (line,) = attempt.stderr.strip().splitlines()
    assert line.startswith("error: ") and str(data_dir) in line and f"pid {holder}" in line, line


async def backup_of(data_dir: Path, backup: Path) -> None:
    backed_up = await relay_command("backup", "--to", str(backup), "--data-dir", str(data_dir))
    assert backed_up.returncode == 0, backed_up.stderr.decode()


async def test_a_second_relay_is_refused_and_leaves_the_first_ones_socket_alone(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with spawn_relay(data) as first:
        attempt = await another_relay(data)
        assert_refused(attempt, data, first.pid)
        assert (data / SOCKET_NAME).is_socket()
        assert await answers_on_control_socket(data)
        assert first.process.returncode is None


async def test_restore_is_refused_while_a_relay_runs_even_after_another_was_refused(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    backup = tmp_path / "backup.db"
    async with spawn_relay(data) as first:
        await backup_of(data, backup)  # a hot backup: no lock needed, the relay keeps serving
        await another_relay(data)  # refused (before: served, then took the socket with it)
        restored = await relay_command("restore", "--from", str(backup),
                                       "--data-dir", str(data))
        assert restored.returncode == 1, restored.stdout.decode()
        message = restored.stderr.decode()
        assert "Traceback" not in message
        (line,) = message.strip().splitlines()
        assert str(data) in line and f"pid {first.pid}" in line, line
        assert list(data.glob("relay.db.replaced-*")) == []  # the store was not touched
        assert await answers_on_control_socket(data)


async def test_the_lock_is_freed_when_the_relay_stops_and_when_it_is_killed(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    backup = tmp_path / "backup.db"
    async with spawn_relay(data) as first:
        assert is_locked(data)
        assert (data / LOCK_NAME).stat().st_mode & 0o777 == 0o600
        assert (data / LOCK_NAME).read_text().split()[0] == str(first.pid)
        await backup_of(data, backup)
        first.process.send_signal(signal.SIGTERM)
        with trio.fail_after(WAIT_S):
            assert await first.process.wait() == 0
    assert not is_locked(data)
    assert not (data / SOCKET_NAME).exists()

    async with spawn_relay(data) as second:  # stopped cleanly: a new relay starts
        assert await answers_on_control_socket(data)
        second.process.kill()
        with trio.fail_after(WAIT_S):
            await second.process.wait()
    assert not is_locked(data)  # the kernel let go of it with the process
    restored = await relay_command("restore", "--from", str(backup), "--data-dir", str(data))
    assert restored.returncode == 0, restored.stderr.decode()

    async with spawn_relay(data) as third:  # and after a SIGKILL, too
        assert (data / LOCK_NAME).read_text().split()[0] == str(third.pid)
        assert await answers_on_control_socket(data)


@pytest.fixture
def cluster_url() -> Iterator[str]:
    with fresh_schema() as schema:
        yield store_url(schema)


async def test_with_workers_the_supervisor_holds_the_lock_for_them(
        cluster_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    backup = tmp_path / "backup.db"
    async with open_sqlite_store(backup):  # any relay store, to restore
        pass
    supervisor: SpawnedRelay
    async with spawn_relay(data, "--workers", "2", store=cluster_url,
                           node_name="locked") as supervisor:
        with trio.fail_after(WAIT_S):
            await supervisor.wait_for("workers_ready")
        assert_refused(await another_relay(data), data, supervisor.pid)
        assert await answers_on_control_socket(data)  # worker 0, under the supervisor's lock
        restored = await relay_command("restore", "--from", str(backup),
                                       "--data-dir", str(data))
        assert restored.returncode == 1 and f"pid {supervisor.pid}" in restored.stderr.decode()
        # Killed, the supervisor leaves its workers to stop on their own (their standard
        # input closes); the lock is free once the last of them is gone.
        supervisor.process.kill()
        await wait_until_free(data)
    assert supervisor.process.returncode == -signal.SIGKILL


async def test_a_refused_relay_in_process_leaves_the_lock_file_and_the_socket_alone(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    with lock_data_dir(data, purpose="restore"):
        held = (data / LOCK_NAME).read_bytes()
        assert held == f"{os.getpid()} restore\n".encode()
        (data / SOCKET_NAME).write_bytes(b"")  # stands for the holder's socket
        with pytest.raises(DataDirectoryInUse,
                           match=rf"^the data directory {data} is in use by a restore "
                                 rf"\(pid {os.getpid()}\)$"):
            await serve(RelaySettings(data_dir=data, listen_port=0))
        assert (data / LOCK_NAME).read_bytes() == held
        assert (data / SOCKET_NAME).read_bytes() == b""
        assert set(data.iterdir()) == {data / LOCK_NAME, data / SOCKET_NAME}  # no store, no tls
    with lock_data_dir(data, purpose="serve"):  # released on leaving: free again
        assert (data / LOCK_NAME).read_text() == f"{os.getpid()} serve\n"


def test_a_worker_adopts_the_lock_it_inherited_and_only_that(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with lock_data_dir(data, purpose="serve") as supervisor_lock:
        # The same open file (what a worker inherits): the same lock, not a second one.
        adopted = inherit_data_dir_lock(data, os.dup(supervisor_lock.descriptor))
        adopted.release()  # closes the copy only: the supervisor still holds the lock
        assert is_locked(data)
        with lock_file(data) as other_opening, pytest.raises(DataDirectoryInUse):
            inherit_data_dir_lock(data, other_opening)  # the file, but not the held lock
        stranger = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(ValueError, match="is not"):
                inherit_data_dir_lock(data, stranger)
        finally:
            os.close(stranger)
    assert not is_locked(data)


async def test_the_data_directory_and_everything_the_relay_writes_are_private(
        tmp_path: Path) -> None:
    """Hardening review: relay.db, its WAL and backups were 0644 in a 0755 directory, and the
    database holds the enrolment secret beside the code hashes. A directory an older version
    left readable is tightened when a relay takes it."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    leftover = data_dir / "sms-outbox.jsonl"
    leftover.write_text("")
    leftover.chmod(0o644)
    async with spawn_relay(data_dir):
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in data_dir.iterdir()
                 if path.is_file()}
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        assert {"relay.db", "relay.db-wal", "sms-outbox.jsonl", "relay.lock"} <= set(modes)
        assert set(modes.values()) == {0o600}, modes
        backup = tmp_path / "backup.db"
        done = subprocess.run([str(BIN / "cryptopass-relay"), "backup", "--data-dir",
                               str(data_dir), "--to", str(backup)],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600
