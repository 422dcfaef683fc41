"""The client's side of wake-up pushes: the profile's push state, its own Web Push endpoint
woken by the relay's real Web Push provider over HTTP, and the ``push`` commands' refusals."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx
import pytest
import trio
from typer.testing import CliRunner

from client.cli import app
from client.push import (
    MAX_PUSH_BODY_BYTES,
    PUSH_FILE,
    PushState,
    PushSubscription,
    WakeError,
    decrypt_wake,
    forget_push_state,
    load_push_state,
    new_outbox_token,
    open_push_endpoint,
    save_push_state,
)
from relay.push_factory import build_providers
from relay.push_providers import PushProvider, PushResult, PushTarget
from relay.settings import RelaySettings

TIMEOUT_S = 30


def relay_webpush(tmp_path: Path) -> PushProvider:
    settings = RelaySettings(data_dir=tmp_path, push_webpush_subject="mailto:ops@example.org",
                             push_webpush_allow_loopback_http=True)
    return build_providers(settings, tmp_path)["webpush"]


def test_the_subscription_keys_are_kept_private_in_the_profile(tmp_path: Path) -> None:
    subscription = PushSubscription.new()
    save_push_state(tmp_path, PushState(provider="webpush", token="http://127.0.0.1:1/push/x",
                                        subscription=subscription))
    assert stat.S_IMODE((tmp_path / PUSH_FILE).stat().st_mode) == 0o600
    loaded = load_push_state(tmp_path)
    assert loaded is not None and loaded.subscription is not None
    assert loaded.subscription.p256dh == subscription.p256dh
    assert loaded.subscription.auth == subscription.auth
    assert "PRIVATE" not in repr(loaded)
    forget_push_state(tmp_path)
    assert load_push_state(tmp_path) is None


def test_outbox_tokens_are_random_and_fit_the_outbox(tmp_path: Path) -> None:
    tokens = {new_outbox_token() for _ in range(100)}
    assert len(tokens) == 100
    outbox = build_providers(RelaySettings(data_dir=tmp_path), tmp_path)["outbox"]
    for token in tokens:
        assert outbox.check_target(PushTarget(provider="outbox", token=token)) is None


async def test_the_relays_web_push_wakes_the_clients_own_endpoint(tmp_path: Path) -> None:
    provider = relay_webpush(tmp_path)
    with trio.fail_after(TIMEOUT_S):
        async with open_push_endpoint("127.0.0.1:0") as endpoint:
            target = PushTarget(provider="webpush", token=endpoint.url,
                                p256dh=endpoint.subscription.p256dh,
                                auth=endpoint.subscription.auth)
            assert provider.check_target(target) is None
            assert (await provider.send(target, urgent=False)).result is PushResult.SENT
            await endpoint.wait(1)
            assert (await provider.send(target, urgent=True)).result is PushResult.SENT
            await endpoint.wait(2)
    assert (endpoint.wakes, endpoint.refused) == (2, 0)


async def test_the_endpoint_refuses_what_is_not_its_wake_up(tmp_path: Path) -> None:
    provider = relay_webpush(tmp_path)
    with trio.fail_after(TIMEOUT_S):
        async with open_push_endpoint("127.0.0.1:0") as endpoint:
            other = PushSubscription.new()
            # Encrypted to another subscription: refused, no wake.
            foreign = PushTarget(provider="webpush", token=endpoint.url, p256dh=other.p256dh,
                                 auth=other.auth)
            assert (await provider.send(foreign, urgent=False)).result is PushResult.FAILED
            # The right keys, a guessed path: the path secret does not match.
            guessed = PushTarget(provider="webpush", token=endpoint.url[:-3] + "abc",
                                 p256dh=endpoint.subscription.p256dh,
                                 auth=endpoint.subscription.auth)
            assert (await provider.send(guessed, urgent=False)).result is PushResult.GONE
            async with httpx.AsyncClient() as http:
                too_big = await http.post(endpoint.url, content=b"x" * (MAX_PUSH_BODY_BYTES + 1))
                garbage = await http.post(endpoint.url, content=b"not encrypted")
    assert (too_big.status_code, garbage.status_code) == (413, 400)
    assert (endpoint.wakes, endpoint.refused) == (0, 3)


def test_decrypt_wake_refuses_tampering(tmp_path: Path) -> None:
    import os

    import http_ece
    from cryptography.hazmat.primitives.asymmetric import ec

    subscription = PushSubscription.new()

    def encrypt(payload: bytes) -> bytes:
        return bytes(http_ece.encrypt(payload, salt=os.urandom(16),
                                      private_key=ec.generate_private_key(ec.SECP256R1()),
                                      dh=subscription.p256dh, auth_secret=subscription.auth,
                                      version="aes128gcm"))

    decrypt_wake(encrypt(b'{"v":1,"wake":true}'), subscription)
    tampered = bytearray(encrypt(b'{"v":1,"wake":true}'))
    tampered[-1] ^= 1
    for body in (bytes(tampered), encrypt(b'{"v":1,"wake":false}'), encrypt(b"hello")):
        with pytest.raises(WakeError):
            decrypt_wake(body, subscription)


@pytest.mark.parametrize(("args", "message"), [
    (["push", "set", "--provider", "pigeon"], "unknown push provider 'pigeon'"),
    (["push", "set", "--provider", "webpush"], "--endpoint URL goes with --provider webpush"),
    (["push", "set", "--provider", "outbox", "--endpoint", "https://x"],
     "--endpoint URL goes with --provider webpush"),
    (["push", "set", "--provider", "apns"], "--provider apns needs --token"),
    (["receive", "--push-wait", "--follow"], "--push-wait and --follow exclude each other"),
])
def test_push_commands_refuse_bad_arguments_before_connecting(
        tmp_path: Path, args: list[str], message: str) -> None:
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "profile.json").write_text(json.dumps({
        "version": 1, "relay": "127.0.0.1:9", "ca": None, "phone": "+33612345678",
        "user_id": "u", "device_id": 1}))
    result = CliRunner().invoke(app, ["--profile", str(profile), *args])
    assert result.exit_code == 1
    assert message in result.output
    assert not (profile / PUSH_FILE).exists()
