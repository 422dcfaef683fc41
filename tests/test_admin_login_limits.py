"""The admin site's password-guess budget and hashing threads, over real HTTPS on loopback
against a relay on a real store: concurrent guesses never check more passwords than the
budget allows (per email, per address, for logins and password changes alike), the budget
recovers when its window ends, and Argon2id runs in a bounded number of worker threads, so
that a burst of logins never stalls the event loop the QUIC devices share.

Clients come from distinct loopback addresses (127.0.0.N) where a test needs many
addresses. Every Argon2id verification is counted through ``argon2.PasswordHasher.verify``.
"""

from __future__ import annotations

import hashlib
import sqlite3
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import argon2
import httpx
import pytest
import trio

from enrolment.web.auth import (
    BUSY_RETRY_AFTER_S,
    MAX_PENDING_PASSWORD_CHECKS,
    PASSWORD_GUESS_WINDOW_MS,
    PASSWORD_GUESSES_ALLOWED,
    PASSWORD_HASHING_THREADS,
)
from relay.server import RunningRelay, serve
from relay.settings import RelaySettings
from storage.login_attempt_sql import FORGET_ENDED_WINDOWS_PER_TAKE
from storage.sqlite import open_sqlite_store
from tests.admin_support import (
    ACME_PHONES,
    FIXED_NOW,
    PASSWORD,
    AdminSite,
    csrf_of,
    log_in,
    make_accounts,
)
from tests.conftest import RelayUnderTest, SmsInbox, declare, enrol
from tests.loop_steps import LONGEST_STEP_S, measure_loop_steps

ADMIN = "admin@acme.example"
WRONG = "not the password, surely"
TIMEOUT_S = 60


@dataclass
class Clock:
    """The relay's clock, moved by the tests."""

    now: int = FIXED_NOW

    def __call__(self) -> int:
        return self.now


@dataclass
class Verifications:
    """Every Argon2id verification: the thread it ran on, and how many ran at once."""

    threads: list[threading.Thread] = field(default_factory=list)
    running: int = 0
    most_at_once: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    hold: threading.Event | None = None
    """When set, each verification waits for it (a test holds the hashing threads)."""


@dataclass
class LimitedSite:
    site: AdminSite
    clock: Clock
    verifications: Verifications

    def client(self, address: str = "127.0.0.1") -> httpx.AsyncClient:
        """A client connecting from ``address`` (any 127.0.0.0/8 address is loopback)."""
        context = ssl.create_default_context(cafile=str(self.site.relay.running.cert_path))
        transport = httpx.AsyncHTTPTransport(verify=context, local_address=address)
        return httpx.AsyncClient(base_url=self.site.base_url, transport=transport, timeout=30)


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> Iterator[Verifications]:
    seen = Verifications()
    original = argon2.PasswordHasher.verify

    def counted(hasher: argon2.PasswordHasher, password_hash: str | bytes,
                password: str | bytes) -> bool:
        with seen.lock:
            seen.threads.append(threading.current_thread())
            seen.running += 1
            seen.most_at_once = max(seen.most_at_once, seen.running)
        try:
            if seen.hold is not None:
                seen.hold.wait(TIMEOUT_S)
            return original(hasher, password_hash, password)
        finally:
            with seen.lock:
                seen.running -= 1

    monkeypatch.setattr(argon2.PasswordHasher, "verify", counted)
    yield seen
    if seen.hold is not None:
        seen.hold.set()  # never leave a hashing thread waiting


@pytest.fixture
async def limited(tmp_path: Path, nursery: trio.Nursery,
                  verifications: Verifications) -> AsyncIterator[LimitedSite]:
    clock = Clock()
    settings = RelaySettings(data_dir=tmp_path / "relay", listen_port=0,
                             admin_listen="127.0.0.1:0")
    settings.data_dir.mkdir(parents=True)
    await declare(settings.data_dir, "acme", *ACME_PHONES, seats=5)
    await declare(settings.data_dir, "globex", "+447911123456", seats=5)
    sms = SmsInbox()
    running: RunningRelay = await nursery.start(lambda task_status: serve(
        settings, task_status=task_status, on_sms_sent=sms, now_ms=clock))
    address = running.context.admin_address
    assert address is not None
    tokens = await make_accounts(running.context.store)
    site = AdminSite(relay=RelayUnderTest(data_dir=settings.data_dir, running=running, sms=sms),
                     base_url=f"https://{address[0]}:{address[1]}", tokens=tokens)
    yield LimitedSite(site=site, clock=clock, verifications=verifications)
    running.stop()


async def _login_forms(limited: LimitedSite, stack: AsyncExitStack,
                       addresses: list[str]) -> list[tuple[httpx.AsyncClient, str]]:
    """One client per address, each with its login form's CSRF token (and cookie)."""
    prepared = []
    for address in addresses:
        client = await stack.enter_async_context(limited.client(address))
        prepared.append((client, csrf_of((await client.get("/login")).text)))
    return prepared


async def _all_at_once(calls: list[Callable[[], Awaitable[httpx.Response]]]
                       ) -> list[httpx.Response]:
    """Start every call together; their answers, in order."""
    answers: list[httpx.Response | None] = [None] * len(calls)
    go = trio.Event()

    async def run(index: int) -> None:
        await go.wait()
        answers[index] = await calls[index]()

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            for index in range(len(calls)):
                nursery.start_soon(run, index)
            go.set()
    return [answer for answer in answers if answer is not None]


def _login(client: httpx.AsyncClient, token: str, email: str,
           password: str) -> Callable[[], Awaitable[httpx.Response]]:
    return lambda: client.post("/login", data={"csrf_token": token, "email": email,
                                               "password": password})


def _statuses(answers: list[httpx.Response]) -> list[int]:
    return sorted(answer.status_code for answer in answers)


def _assert_limited(answer: httpx.Response, *, retry_after_s: int) -> None:
    assert answer.status_code == 429, answer.text
    assert answer.headers["retry-after"] == str(retry_after_s)
    assert "too many wrong passwords" in answer.text


ATTACKS: dict[str, tuple[Callable[[int], str], Callable[[int], str]]] = {
    "one email from one address": (lambda n: ADMIN, lambda n: "127.0.0.1"),
    "a new email each time from one address": (lambda n: f"nobody{n}@acme.example",
                                               lambda n: "127.0.0.1"),
    "one email from a new address each time": (lambda n: ADMIN, lambda n: f"127.0.1.{n + 1}"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_sixty_concurrent_wrong_logins_check_at_most_the_budget(
        limited: LimitedSite, attack: str) -> None:
    email_of, address_of = ATTACKS[attack]
    async with AsyncExitStack() as stack:
        forms = await _login_forms(limited, stack, [address_of(n) for n in range(60)])
        answers = await _all_at_once([_login(client, token, email_of(n), WRONG)
                                      for n, (client, token) in enumerate(forms)])
        assert not any("__Host-cryptopass_session" in client.cookies for client, _ in forms)
    assert len(limited.verifications.threads) == PASSWORD_GUESSES_ALLOWED
    assert _statuses(answers) == [401] * PASSWORD_GUESSES_ALLOWED \
        + [429] * (60 - PASSWORD_GUESSES_ALLOWED)
    for answer in answers:
        if answer.status_code == 429:
            _assert_limited(answer, retry_after_s=PASSWORD_GUESS_WINDOW_MS // 1000)
    # The right password is refused too while the budget is spent, and checks nothing.
    async with AsyncExitStack() as stack:
        [(client, token)] = await _login_forms(limited, stack, [address_of(0)])
        _assert_limited(await _login(client, token, email_of(0), PASSWORD)(),
                        retry_after_s=PASSWORD_GUESS_WINDOW_MS // 1000)
    assert len(limited.verifications.threads) == PASSWORD_GUESSES_ALLOWED


async def test_the_budget_recovers_when_its_window_ends(limited: LimitedSite) -> None:
    async with limited.client() as browser:
        for _ in range(PASSWORD_GUESSES_ALLOWED):
            assert (await log_in(limited.site, browser, ADMIN, WRONG)).status_code == 401
        limited.clock.now += PASSWORD_GUESS_WINDOW_MS - 1_500
        _assert_limited(await log_in(limited.site, browser, ADMIN), retry_after_s=2)
        limited.clock.now += 1_500
        assert (await log_in(limited.site, browser, ADMIN)).status_code == 303


async def test_right_passwords_do_not_use_the_budget(limited: LimitedSite) -> None:
    async with limited.client() as browser:
        for _ in range(2 * PASSWORD_GUESSES_ALLOWED):
            assert (await log_in(limited.site, browser, ADMIN)).status_code == 303
        for _ in range(PASSWORD_GUESSES_ALLOWED):
            assert (await log_in(limited.site, browser, ADMIN, WRONG)).status_code == 401
        _assert_limited(await log_in(limited.site, browser, ADMIN),
                        retry_after_s=PASSWORD_GUESS_WINDOW_MS // 1000)


async def test_password_change_guesses_share_the_budget_and_recover(
        limited: LimitedSite) -> None:
    async with limited.client() as browser:
        assert (await log_in(limited.site, browser, ADMIN)).status_code == 303
        csrf = csrf_of((await browser.get("/account")).text)

        def change(current: str) -> Callable[[], Awaitable[httpx.Response]]:
            return lambda: browser.post("/account/password", data={
                "csrf_token": csrf, "current": current, "new": "a brand new passphrase"})

        limited.verifications.threads.clear()
        answers = await _all_at_once([change(WRONG) for _ in range(20)])
        assert len(limited.verifications.threads) == PASSWORD_GUESSES_ALLOWED
        assert _statuses(answers) == [403] * PASSWORD_GUESSES_ALLOWED \
            + [429] * (20 - PASSWORD_GUESSES_ALLOWED)
        for answer in answers:
            if answer.status_code == 429:
                _assert_limited(answer, retry_after_s=PASSWORD_GUESS_WINDOW_MS // 1000)
        # The same budget as logins: this email and this address are spent for both.
        _assert_limited(await change(PASSWORD)(),
                        retry_after_s=PASSWORD_GUESS_WINDOW_MS // 1000)
        _assert_limited(await log_in(limited.site, browser, "admin@globex.example"),
                        retry_after_s=PASSWORD_GUESS_WINDOW_MS // 1000)
        limited.clock.now += PASSWORD_GUESS_WINDOW_MS
        changed = await change(PASSWORD)()
        assert changed.status_code == 200, changed.text
        assert "password changed" in changed.text


def _burst_emails(count: int) -> list[str]:
    """One guess at each account, the others at unknown emails (checked all the same)."""
    accounts = ["operator@example.net", ADMIN, "admin@globex.example"]
    return [*accounts, *(f"nobody{n}@acme.example" for n in range(count - len(accounts)))]


async def test_a_burst_of_logins_is_hashed_off_the_event_loop(limited: LimitedSite) -> None:
    # A QUIC device keeps making round trips while 30 logins from 30 addresses (none limited
    # by the budget) are checked; no step of the loop comes near an Argon2id hash.
    relay = limited.site.relay
    device = await enrol(relay, ACME_PHONES[0])
    round_trips = 0
    burst_over = trio.Event()
    async with AsyncExitStack() as stack:
        forms = await _login_forms(limited, stack, [f"127.0.2.{n + 1}" for n in range(30)])
        quic = await stack.enter_async_context(relay.connect())
        await quic.authenticate(device.user_id, device.device_id, device.key)
        limited.verifications.threads.clear()

        async def bystander() -> None:
            nonlocal round_trips
            while not burst_over.is_set():
                await quic.prekey_counts()
                round_trips += 1

        with measure_loop_steps() as steps:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bystander)
                answers = await _all_at_once([
                    _login(client, token, email, WRONG)
                    for (client, token), email in zip(forms, _burst_emails(30), strict=True)])
                burst_over.set()
    assert _statuses(answers) == [401] * 30
    assert len(limited.verifications.threads) == 30
    assert threading.main_thread() not in limited.verifications.threads
    assert limited.verifications.most_at_once <= PASSWORD_HASHING_THREADS
    assert steps.longest_s < LONGEST_STEP_S, (steps.longest_s, steps.longest_task)
    assert round_trips > 0


async def test_logins_past_the_pending_bound_are_refused_busy_then_served(
        limited: LimitedSite) -> None:
    # The hashing threads are held: MAX_PENDING_PASSWORD_CHECKS logins wait for them and the
    # others are refused at once as busy (their guesses given back), until the queue drains.
    sprayed = MAX_PENDING_PASSWORD_CHECKS + 8
    hold = limited.verifications.hold = threading.Event()
    busy: dict[str, httpx.Response] = {}
    waited: list[httpx.Response] = []
    all_busy = trio.Event()
    async with AsyncExitStack() as stack:
        forms = await _login_forms(limited, stack,
                                   [f"127.0.3.{n + 1}" for n in range(sprayed + 2)])

        async def attempt(n: int) -> None:
            client, token = forms[n]
            email = f"spray{n}@acme.example"
            answer = await _login(client, token, email, WRONG)()
            if answer.status_code == 503:
                busy[email] = answer
            else:
                waited.append(answer)
            if len(busy) == sprayed - MAX_PENDING_PASSWORD_CHECKS:
                all_busy.set()

        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                for n in range(sprayed):
                    nursery.start_soon(attempt, n)
                await all_busy.wait()
                assert waited == []
                hold.set()
        assert [answer.status_code for answer in waited] == [401] * MAX_PENDING_PASSWORD_CHECKS
        for answer in busy.values():
            assert answer.headers["retry-after"] == str(BUSY_RETRY_AFTER_S)
            assert "busy" in answer.text
        # Served again once the queue has drained.
        client, token = forms[sprayed]
        assert (await _login(client, token, ADMIN, PASSWORD)()).status_code == 303
        # A login refused as busy left its email's whole budget.
        client, token = forms[sprayed + 1]
        refused_email = next(iter(busy))
        for _ in range(PASSWORD_GUESSES_ALLOWED):
            answer = await _login(client, token, refused_email, WRONG)()
            assert answer.status_code == 401


async def test_rounds_of_a_spray_do_not_grow_the_guess_table(tmp_path: Path) -> None:
    # Each round guesses from new addresses at new emails, one window after the last: the
    # takes forget the ended windows as they go, so every round ends with the same rows.
    spray = 3 * FORGET_ENDED_WINDOWS_PER_TAKE

    def rows(connection: sqlite3.Connection) -> int:
        return int(connection.execute("SELECT count(*) FROM login_attempts").fetchone()[0])

    counts = []
    async with open_sqlite_store(tmp_path / "relay.db") as store:
        for round_number in range(4):
            now = FIXED_NOW + round_number * PASSWORD_GUESS_WINDOW_MS
            for guess in range(spray):
                keys = [hashlib.sha256(f"{kind}:{round_number}:{guess}".encode()).digest()
                        for kind in ("email", "address")]
                attempt = await store.take_login_attempt(
                    keys=keys, allowed=PASSWORD_GUESSES_ALLOWED,
                    window_ms=PASSWORD_GUESS_WINDOW_MS, now=now)
                assert attempt.granted
            counts.append(await store.read_for_tests(rows))
    assert counts == [2 * spray] * 4
