"""A profile's files stay private and have one writer (client/profile_files.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trio
import trio.testing

from client.profile import DEVICE_STATE_FILE, Profile
from client.profile_files import ProfileBusyError, ProfileLock, write_private


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_loose_directory_with_a_leftover_temporary_file_still_gives_a_private_state(
        tmp_path: Path) -> None:
    # The review's case: a 0755 directory holding a stale, world-readable "device.state.tmp".
    directory = tmp_path / "profile"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    leftover = directory / (DEVICE_STATE_FILE + ".tmp")
    leftover.write_bytes(b"old")
    leftover.chmod(0o644)
    Profile(directory).save_device_state(b"secret state")
    assert _mode(directory) == 0o700
    assert _mode(directory / DEVICE_STATE_FILE) == 0o600
    assert (directory / DEVICE_STATE_FILE).read_bytes() == b"secret state"
    assert leftover.read_bytes() == b"old"  # never written through
    assert [path.name for path in directory.iterdir() if path.name.endswith(".tmp")] == [
        leftover.name]


def test_a_symbolic_link_in_place_of_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"untouched")
    directory = tmp_path / "profile"
    directory.mkdir(mode=0o700)
    (directory / "identity.key").symlink_to(outside)
    write_private(directory / "identity.key", b"k" * 32)
    assert outside.read_bytes() == b"untouched"
    assert not (directory / "identity.key").is_symlink()
    assert _mode(directory / "identity.key") == 0o600


def test_opening_a_profile_narrows_its_directory(tmp_path: Path) -> None:
    directory = tmp_path / "profile"
    directory.mkdir()
    directory.chmod(0o755)
    Profile(directory)
    assert _mode(directory) == 0o700


def test_a_failed_write_leaves_neither_a_temporary_file_nor_a_changed_target(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "profile"
    write_private(directory / "state", b"before")

    def refuse(source: object, target: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_private(directory / "state", b"after")
    assert (directory / "state").read_bytes() == b"before"
    assert sorted(path.name for path in directory.iterdir()) == ["state"]


async def test_a_second_holder_waits_its_turn_then_takes_the_lock(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    first, second = ProfileLock(tmp_path), ProfileLock(tmp_path)  # two open files: two holders
    await first.acquire()
    taken = trio.Event()

    async def take_second() -> None:
        await second.acquire()
        taken.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take_second)
        await trio.sleep(5)  # virtual time: the second is still waiting
        assert not taken.is_set()
        first.release()
        with trio.fail_after(1):
            await taken.wait()
    assert second.held
    second.release()


async def test_a_holder_that_never_lets_go_gives_a_clear_error_after_the_bounded_wait(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    first, second = ProfileLock(tmp_path), ProfileLock(tmp_path, timeout_s=30)
    await first.acquire()
    started = trio.current_time()
    with pytest.raises(ProfileBusyError, match="another cryptopass process is using"):
        await second.acquire()
    assert trio.current_time() - started == pytest.approx(30, abs=0.1)
    assert not second.held
    first.release()
    await second.acquire()  # free now
    second.release()


async def test_the_lock_is_reentrant_within_one_holder(tmp_path: Path) -> None:
    lock, other = ProfileLock(tmp_path), ProfileLock(tmp_path, timeout_s=0)
    await lock.acquire()
    await lock.acquire()
    lock.release()
    with pytest.raises(ProfileBusyError):
        await other.acquire()  # still held once
    lock.release()
    await other.acquire()
    other.release()
    with pytest.raises(RuntimeError):
        lock.release()
