"""The push providers against real HTTP services on loopback (tests/push_receivers.py).

Each provider is the relay's own (made by ``build_providers`` from settings where it can be),
posting over real sockets: nothing inside the relay is replaced. What is checked is what the
service checks (VAPID and provider tokens, OAuth assertions, message shapes, RFC 8291
decryption with the subscription's key) and how each answer becomes an outcome.
"""

from __future__ import annotations

import email.utils
import json
import ssl
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from relay.push_apns import ApnsProvider
from relay.push_factory import VAPID_KEY_FILE_NAME, build_providers, load_or_create_vapid_key
from relay.push_fcm import FcmProvider
from relay.push_http import parse_retry_after
from relay.push_outbox import OutboxProvider
from relay.push_providers import PushOutcome, PushResult, PushTarget
from relay.push_webpush import WAKE_PAYLOAD, WebPushProvider
from relay.settings import RelaySettings
from tests.push_receivers import (
    Answer,
    ApnsReceiver,
    FcmReceiver,
    WebPushReceiver,
    serving,
)

DEVICE_TOKEN = "a1" * 32


def webpush_settings(tmp_path: Path, **overrides: object) -> RelaySettings:
    values: dict[str, object] = {
        "data_dir": tmp_path, "push_webpush_subject": "mailto:ops@cryptopass.test",
        "push_webpush_allow_loopback_http": True, "push_timeout_s": 2.0}
    values.update(overrides)
    return RelaySettings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def webpush(tmp_path: Path) -> AsyncIterator[tuple[WebPushProvider, WebPushReceiver]]:
    providers = build_providers(webpush_settings(tmp_path), tmp_path)
    provider = providers["webpush"]
    assert isinstance(provider, WebPushProvider)
    key = load_or_create_vapid_key(tmp_path / VAPID_KEY_FILE_NAME)
    receiver = WebPushReceiver(key.public_key())
    async with serving(receiver):
        yield provider, receiver
    await provider.aclose()


def webpush_target(receiver: WebPushReceiver) -> PushTarget:
    endpoint, p256dh, auth = receiver.subscribe()
    return PushTarget(provider="webpush", token=endpoint, p256dh=p256dh, auth=auth)


# -- Web Push ------------------------------------------------------------------------------


async def test_a_web_push_is_decrypted_by_the_subscription_and_signed_by_the_relay(
        webpush: tuple[WebPushProvider, WebPushReceiver]) -> None:
    provider, receiver = webpush
    target = webpush_target(receiver)
    with trio.fail_after(30):
        assert (await provider.send(target, urgent=False)).result is PushResult.SENT
        assert (await provider.send(target, urgent=True)).result is PushResult.SENT
    assert receiver.problems == []
    normal, urgent = receiver.received
    assert normal.payload == urgent.payload == WAKE_PAYLOAD
    assert (normal.headers["urgency"], urgent.headers["urgency"]) == ("normal", "high")
    assert normal.headers["ttl"] == str(RelaySettings().push_ttl_s)
    # The same size whatever the urgency: the body tells the push service nothing.
    assert len(normal.body) == len(urgent.body)
    assert WAKE_PAYLOAD not in normal.body


async def test_a_push_for_another_subscription_key_cannot_be_read(
        webpush: tuple[WebPushProvider, WebPushReceiver]) -> None:
    """Encrypted to the registered key: a subscription with other keys cannot decrypt it."""
    provider, receiver = webpush
    target = webpush_target(receiver)
    _, other_key, other_auth = receiver.subscribe()
    forged = PushTarget(provider="webpush", token=target.token, p256dh=other_key,
                        auth=other_auth)
    with trio.fail_after(30):
        outcome = await provider.send(forged, urgent=False)
    assert outcome.result is PushResult.FAILED  # the receiver answered 400
    assert receiver.received[0].payload is None
    assert "cannot decrypt" in receiver.problems[0]


async def test_a_vapid_token_of_another_key_is_refused_by_the_service(tmp_path: Path) -> None:
    other = load_or_create_vapid_key(tmp_path / "other.pem")
    provider = build_providers(webpush_settings(tmp_path), tmp_path)["webpush"]
    receiver = WebPushReceiver(other.public_key())
    async with serving(receiver):
        with trio.fail_after(30):
            outcome = await provider.send(webpush_target(receiver), urgent=False)
    assert outcome.result is PushResult.FAILED
    assert receiver.problems == ["the k= key is not the relay's VAPID key"]


@pytest.mark.parametrize(("answer", "result", "retry_after_s"), [
    (Answer(201), PushResult.SENT, None),
    (Answer(410), PushResult.GONE, None),
    (Answer(404), PushResult.GONE, None),
    (Answer(503, {"Retry-After": "120"}), PushResult.RETRY, 120.0),
    (Answer(429, {"Retry-After": "7"}), PushResult.RETRY, 7.0),
    (Answer(500), PushResult.RETRY, None),
    (Answer(400), PushResult.FAILED, None),
    (Answer(413), PushResult.FAILED, None),
    (Answer(403), PushResult.FAILED, None),
])
async def test_each_web_push_answer_maps_to_its_outcome(
        webpush: tuple[WebPushProvider, WebPushReceiver], answer: Answer, result: PushResult,
        retry_after_s: float | None) -> None:
    provider, receiver = webpush
    receiver.answers.append(answer)
    with trio.fail_after(30):
        outcome = await provider.send(webpush_target(receiver), urgent=False)
    assert (outcome.result, outcome.retry_after_s) == (result, retry_after_s)
    assert receiver.problems == []


async def test_a_retry_after_date_is_honoured(
        webpush: tuple[WebPushProvider, WebPushReceiver]) -> None:
    provider, receiver = webpush
    later = email.utils.formatdate(time.time() + 600, usegmt=True)
    receiver.answers.append(Answer(503, {"Retry-After": later}))
    with trio.fail_after(30):
        outcome = await provider.send(webpush_target(receiver), urgent=False)
    assert outcome.result is PushResult.RETRY
    assert outcome.retry_after_s is not None and 500 < outcome.retry_after_s <= 600


def test_retry_after_is_read_as_seconds_or_a_date_and_bounded() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("30", now=lambda: now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now + 90, usegmt=True),
                             now=lambda: now) == 90.0
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True),
                             now=lambda: now) == 0.0
    assert parse_retry_after("99999999", now=lambda: now) == 24 * 3600.0
    assert parse_retry_after("soon", now=lambda: now) is None
    assert parse_retry_after(None) is None


async def test_a_service_that_does_not_answer_is_retried(tmp_path: Path) -> None:
    provider = build_providers(webpush_settings(tmp_path, push_timeout_s=0.2),
                               tmp_path)["webpush"]
    receiver = WebPushReceiver()
    receiver.answers.append(Answer(201, hang=True))
    async with serving(receiver):
        with trio.fail_after(30):
            outcome = await provider.send(webpush_target(receiver), urgent=False)
    assert outcome == PushOutcome(result=PushResult.RETRY, detail="webpush timeout")


@pytest.mark.parametrize("answer", [Answer(201, endless=True), Answer(503, endless=True)])
async def test_an_endless_answer_is_read_no_further_than_its_start(
        webpush: tuple[WebPushProvider, WebPushReceiver], answer: Answer) -> None:
    provider, receiver = webpush
    receiver.answers.append(answer)
    with trio.fail_after(30):
        outcome = await provider.send(webpush_target(receiver), urgent=False)
    assert outcome.result is (PushResult.SENT if answer.status == 201 else PushResult.RETRY)


async def test_a_trickling_answer_is_cut_at_the_deadline(tmp_path: Path) -> None:
    """httpx's timeouts bound each read; a byte every 50 ms would never trip them."""
    provider = build_providers(webpush_settings(tmp_path, push_timeout_s=0.2),
                               tmp_path)["webpush"]
    receiver = WebPushReceiver()
    receiver.answers.append(Answer(201, trickle=True))
    async with serving(receiver):
        with trio.fail_after(30):
            outcome = await provider.send(webpush_target(receiver), urgent=False)
    assert outcome == PushOutcome(result=PushResult.RETRY, detail="webpush timeout")


async def test_a_refused_connection_is_retried(tmp_path: Path) -> None:
    provider = build_providers(webpush_settings(tmp_path), tmp_path)["webpush"]
    receiver = WebPushReceiver()
    async with serving(receiver):
        target = webpush_target(receiver)
    # The receiver is gone: its port refuses connections.
    with trio.fail_after(30):
        outcome = await provider.send(target, urgent=False)
    assert outcome.result is PushResult.RETRY
    assert target.token not in outcome.detail  # never an endpoint in a log or metric


async def test_a_redirect_is_not_followed(
        webpush: tuple[WebPushProvider, WebPushReceiver]) -> None:
    provider, receiver = webpush
    elsewhere = webpush_target(receiver)
    receiver.answers.append(Answer(307, {"Location": elsewhere.token}))
    with trio.fail_after(30):
        outcome = await provider.send(webpush_target(receiver), urgent=False)
    assert outcome.result is PushResult.FAILED
    assert len(receiver.received) == 1


# -- the endpoints a hostile client registers ---------------------------------------------

HOSTILE_ENDPOINTS = [
    "http://127.0.0.1:9443/admin/api/users",  # the relay's own admin port
    "https://127.0.0.1/push",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "https://169.254.169.254/latest/meta-data/",
    "https://[::1]/push",
    "https://[fe80::1]/push",
    "https://10.0.0.5/push",
    "https://192.168.1.1/push",
    "https://localhost/push",
    "https://2130706433/push",  # 127.0.0.1 as one number
    "https://0x7f.0.0.1/push",
    "http://fcm.googleapis.com/fcm/send/x",  # not https
    "https://fcm.googleapis.com:8443/fcm/send/x",  # another port
    "https://fcm.googleapis.com.attacker.example/x",
    "https://attacker.example/?fcm.googleapis.com",
    "https://notfcm.googleapis.com.example/x",
    "https://user@fcm.googleapis.com/x",
    "https://fcm.googleapis.com@127.0.0.1/x",
    "https://127.0.0.1\\.fcm.googleapis.com/x",
    "https://%31%32%37.0.0.1/x",
    "file:///etc/passwd",
    "gopher://fcm.googleapis.com/x",
    "https://fcm.googleapis.com/" + "x" * 2000,
    "https://fcm.googleapis.com/x y",
]


@pytest.mark.parametrize("endpoint", HOSTILE_ENDPOINTS)
def test_a_hostile_endpoint_is_refused_with_a_reason(tmp_path: Path, endpoint: str) -> None:
    provider = build_providers(webpush_settings(tmp_path, push_webpush_allow_loopback_http=False),
                               tmp_path)["webpush"]
    receiver = WebPushReceiver()
    _, p256dh, auth = receiver.subscribe()
    reason = provider.check_target(PushTarget(provider="webpush", token=endpoint,
                                              p256dh=p256dh, auth=auth))
    assert reason is not None and reason.startswith("the endpoint")
    assert endpoint not in reason


@pytest.mark.parametrize("endpoint", [
    "http://169.254.169.254/latest/meta-data/", "https://10.0.0.5/push",
    "http://[fe80::1]/push", "https://fcm.googleapis.com.attacker.example/x"])
def test_development_loopback_opens_loopback_only(tmp_path: Path, endpoint: str) -> None:
    provider = build_providers(webpush_settings(tmp_path), tmp_path)["webpush"]
    _, p256dh, auth = WebPushReceiver().subscribe()
    assert provider.check_target(PushTarget(provider="webpush", token=endpoint,
                                            p256dh=p256dh, auth=auth)) is not None


def test_the_public_push_services_are_allowed_by_default(tmp_path: Path) -> None:
    provider = build_providers(webpush_settings(tmp_path, push_webpush_allow_loopback_http=False),
                               tmp_path)["webpush"]
    _, p256dh, auth = WebPushReceiver().subscribe()
    for endpoint in ("https://fcm.googleapis.com/fcm/send/abc:def",
                     "https://updates.push.services.mozilla.com/wpush/v2/gAAA",
                     "https://web.push.apple.com/QGuQ", "https://wns2-par02p.notify.windows.com/w/?token=x"):
        assert provider.check_target(PushTarget(provider="webpush", token=endpoint,
                                                p256dh=p256dh, auth=auth)) is None, endpoint


def test_a_web_push_target_needs_valid_keys(tmp_path: Path) -> None:
    provider = build_providers(webpush_settings(tmp_path), tmp_path)["webpush"]
    endpoint, p256dh, auth = WebPushReceiver().subscribe()
    not_on_curve = b"\x04" + b"\x01" * 64
    for p256dh_bad, auth_bad in ((None, auth), (p256dh, None), (p256dh, auth[:8]),
                                 (p256dh[:33], auth), (not_on_curve, auth)):
        assert provider.check_target(PushTarget(provider="webpush", token=endpoint,
                                                p256dh=p256dh_bad, auth=auth_bad)) is not None


async def test_a_hostile_endpoint_stored_earlier_is_never_fetched(tmp_path: Path) -> None:
    """A target registered while loopback was allowed, sent after it was turned off."""
    strict = build_providers(webpush_settings(tmp_path, push_webpush_allow_loopback_http=False),
                             tmp_path)["webpush"]
    receiver = WebPushReceiver()
    async with serving(receiver):
        with trio.fail_after(30):
            outcome = await strict.send(webpush_target(receiver), urgent=True)
    assert outcome.result is PushResult.FAILED
    assert receiver.received == []


# -- FCM -----------------------------------------------------------------------------------


@pytest.fixture
async def fcm(tmp_path: Path) -> AsyncIterator[tuple[FcmProvider, FcmReceiver]]:
    receiver = FcmReceiver()
    async with serving(receiver) as base_url:
        credentials = tmp_path / "fcm.json"
        credentials.write_text(json.dumps(receiver.make_account()))
        settings = RelaySettings(data_dir=tmp_path, push_fcm_credentials_file=credentials,
                                 push_fcm_base_url=base_url, push_timeout_s=2.0)
        provider = build_providers(settings, tmp_path)["fcm"]
        assert isinstance(provider, FcmProvider)
        yield provider, receiver
        await provider.aclose()


FCM_TOKEN = "fcm-device:APA91b" + "x" * 140


async def test_fcm_mints_one_access_token_and_sends_data_only_messages(
        fcm: tuple[FcmProvider, FcmReceiver]) -> None:
    provider, receiver = fcm
    target = PushTarget(provider="fcm", token=FCM_TOKEN)
    with trio.fail_after(30):
        assert (await provider.send(target, urgent=False)).result is PushResult.SENT
        assert (await provider.send(target, urgent=True)).result is PushResult.SENT
    assert receiver.problems == []
    assert receiver.token_requests == 1  # the access token is kept until near its expiry
    normal, urgent = (json.loads(item.body)["message"] for item in receiver.received)
    assert normal["token"] == FCM_TOKEN
    assert normal["data"] == {"wake": "1"}
    assert (normal["android"]["priority"], urgent["android"]["priority"]) == ("NORMAL", "HIGH")


@pytest.mark.parametrize(("answer", "result", "retry_after_s"), [
    (Answer(404, body={"error": {"code": 404, "status": "NOT_FOUND",
                                 "details": [{"errorCode": "UNREGISTERED"}]}}),
     PushResult.GONE, None),
    (Answer(400, body={"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                 "details": [{"errorCode": "UNREGISTERED"}]}}),
     PushResult.GONE, None),
    (Answer(400, body={"error": {"code": 400, "status": "INVALID_ARGUMENT"}}),
     PushResult.FAILED, None),
    (Answer(403, body={"error": {"code": 403, "status": "PERMISSION_DENIED",
                                 "details": [{"errorCode": "SENDER_ID_MISMATCH"}]}}),
     PushResult.FAILED, None),
    (Answer(503, {"Retry-After": "30"}), PushResult.RETRY, 30.0),
    (Answer(429, {"Retry-After": "60"},
            body={"error": {"details": [{"errorCode": "QUOTA_EXCEEDED"}]}}),
     PushResult.RETRY, 60.0),
])
async def test_each_fcm_answer_maps_to_its_outcome(
        fcm: tuple[FcmProvider, FcmReceiver], answer: Answer, result: PushResult,
        retry_after_s: float | None) -> None:
    provider, receiver = fcm
    receiver.answers.append(answer)
    with trio.fail_after(30):
        outcome = await provider.send(PushTarget(provider="fcm", token=FCM_TOKEN), urgent=False)
    assert (outcome.result, outcome.retry_after_s) == (result, retry_after_s)


async def test_fcm_renews_a_refused_access_token(fcm: tuple[FcmProvider, FcmReceiver]) -> None:
    provider, receiver = fcm
    target = PushTarget(provider="fcm", token=FCM_TOKEN)
    with trio.fail_after(30):
        assert (await provider.send(target, urgent=False)).result is PushResult.SENT
        receiver.issued.clear()  # the service revokes the token it gave
        assert (await provider.send(target, urgent=False)).result is PushResult.RETRY
        assert (await provider.send(target, urgent=False)).result is PushResult.SENT
    assert receiver.token_requests == 2


async def test_fcm_token_endpoint_refusals(fcm: tuple[FcmProvider, FcmReceiver]) -> None:
    provider, receiver = fcm
    target = PushTarget(provider="fcm", token=FCM_TOKEN)
    receiver.token_answers += [Answer(503, {"Retry-After": "5"}, body={}),
                               Answer(400, body={"error": "invalid_grant"})]
    with trio.fail_after(30):
        first = await provider.send(target, urgent=False)
        second = await provider.send(target, urgent=False)
    assert (first.result, first.retry_after_s) == (PushResult.RETRY, 5.0)
    assert second.result is PushResult.FAILED
    assert not any(item.path.endswith("messages:send") for item in receiver.received)


async def test_fcm_targets_are_registration_tokens(fcm: tuple[FcmProvider, FcmReceiver]) -> None:
    provider, _ = fcm
    assert provider.check_target(PushTarget(provider="fcm", token=FCM_TOKEN)) is None
    for token in ("", "has space", "a/b", "x" * 5000):
        assert provider.check_target(PushTarget(provider="fcm", token=token)) is not None


# -- APNs ----------------------------------------------------------------------------------


@pytest.fixture
async def apns(tmp_path: Path) -> AsyncIterator[tuple[ApnsProvider, ApnsReceiver]]:
    receiver = ApnsReceiver()
    async with serving(receiver, tls_dir=tmp_path / "tls") as base_url:
        key_file = tmp_path / "AuthKey.p8"
        key_file.write_bytes(receiver.key_pem())
        settings = RelaySettings(
            data_dir=tmp_path, push_apns_key_file=key_file, push_apns_key_id=receiver.key_id,
            push_apns_team_id=receiver.team_id, push_apns_topic=receiver.topic,
            push_apns_host=base_url, push_apns_ca_file=tmp_path / "tls" / "cert.pem",
            push_timeout_s=2.0)
        provider = build_providers(settings, tmp_path)["apns"]
        assert isinstance(provider, ApnsProvider)
        yield provider, receiver
        await provider.aclose()


async def test_apns_sends_background_pushes_over_http2_with_a_provider_token(
        apns: tuple[ApnsProvider, ApnsReceiver]) -> None:
    provider, receiver = apns
    target = PushTarget(provider="apns", token=DEVICE_TOKEN)
    with trio.fail_after(30):
        assert (await provider.send(target, urgent=False)).result is PushResult.SENT
        assert (await provider.send(target, urgent=True)).result is PushResult.SENT
    assert receiver.problems == []
    normal, urgent = receiver.received
    assert normal.http_version == "2"
    assert normal.path == f"/3/device/{DEVICE_TOKEN}"
    assert (normal.headers["apns-priority"], urgent.headers["apns-priority"]) == ("5", "10")
    assert json.loads(normal.body) == {"aps": {"content-available": 1}}


@pytest.mark.parametrize(("answer", "result", "retry_after_s"), [
    (Answer(410, body={"reason": "Unregistered", "timestamp": 1}), PushResult.GONE, None),
    (Answer(400, body={"reason": "BadDeviceToken"}), PushResult.GONE, None),
    (Answer(400, body={"reason": "BadTopic"}), PushResult.FAILED, None),
    (Answer(403, body={"reason": "ExpiredProviderToken"}), PushResult.RETRY, None),
    (Answer(429, {"Retry-After": "15"}, body={"reason": "TooManyRequests"}),
     PushResult.RETRY, 15.0),
    (Answer(503, {"Retry-After": "45"}, body={"reason": "ServiceUnavailable"}),
     PushResult.RETRY, 45.0),
    (Answer(404, body={"reason": "BadPath"}), PushResult.FAILED, None),
])
async def test_each_apns_answer_maps_to_its_outcome(
        apns: tuple[ApnsProvider, ApnsReceiver], answer: Answer, result: PushResult,
        retry_after_s: float | None) -> None:
    provider, receiver = apns
    receiver.answers.append(answer)
    with trio.fail_after(30):
        outcome = await provider.send(PushTarget(provider="apns", token=DEVICE_TOKEN),
                                      urgent=False)
    assert (outcome.result, outcome.retry_after_s) == (result, retry_after_s)


async def test_apns_is_refused_without_the_servers_certificate(tmp_path: Path) -> None:
    receiver = ApnsReceiver()
    async with serving(receiver, tls_dir=tmp_path / "tls") as base_url:
        provider = ApnsProvider(key=receiver.key, key_id=receiver.key_id,
                                team_id=receiver.team_id, topic=receiver.topic, host=base_url,
                                timeout_s=2.0, ttl_s=60, verify=ssl.create_default_context())
        with trio.fail_after(30):
            outcome = await provider.send(PushTarget(provider="apns", token=DEVICE_TOKEN),
                                          urgent=False)
        await provider.aclose()
    assert outcome.result is PushResult.RETRY
    assert receiver.received == []


# -- outbox and the factory ----------------------------------------------------------------


async def test_the_outbox_appends_private_json_lines(tmp_path: Path) -> None:
    provider = build_providers(RelaySettings(data_dir=tmp_path), tmp_path)["outbox"]
    assert isinstance(provider, OutboxProvider)
    target = PushTarget(provider="outbox", token="device-7f3a")
    assert (await provider.send(target, urgent=True)).result is PushResult.SENT
    assert (await provider.send(target, urgent=False)).result is PushResult.SENT
    lines = [json.loads(line) for line in provider.path.read_text().splitlines()]
    assert [(line["provider"], line["token"], line["urgent"]) for line in lines] == [
        ("outbox", "device-7f3a", True), ("outbox", "device-7f3a", False)]
    assert set(lines[0]) == {"provider", "token", "urgent", "at"}
    assert stat.S_IMODE(provider.path.stat().st_mode) == 0o600
    assert provider.check_target(PushTarget(provider="outbox", token="../x")) is not None


def test_only_configured_providers_are_built(tmp_path: Path) -> None:
    assert set(build_providers(RelaySettings(data_dir=tmp_path), tmp_path)) == {"outbox"}
    with_webpush = build_providers(webpush_settings(tmp_path), tmp_path)
    assert set(with_webpush) == {"outbox", "webpush"}
    key_file = tmp_path / VAPID_KEY_FILE_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # The key is made once and kept: a second start signs with the same key.
    first = key_file.read_bytes()
    build_providers(webpush_settings(tmp_path), tmp_path)
    assert key_file.read_bytes() == first


def test_unusable_credentials_are_named_not_shown(tmp_path: Path) -> None:
    from relay.push_http import PushConfigError

    secret_text = "-----BEGIN PRIVATE KEY-----\nTOP-SECRET-MARKER\n-----END PRIVATE KEY-----\n"
    broken = tmp_path / "fcm.json"
    broken.write_text(json.dumps({"project_id": "p", "client_email": "e", "token_uri": "u",
                                  "private_key": secret_text}))
    p8 = tmp_path / "AuthKey.p8"
    p8.write_text(secret_text)
    for settings in (
            RelaySettings(data_dir=tmp_path, push_fcm_credentials_file=broken),
            RelaySettings(data_dir=tmp_path, push_apns_key_file=p8, push_apns_key_id="K",
                          push_apns_team_id="T", push_apns_topic="org.x"),
            webpush_settings(tmp_path, push_webpush_vapid_key_file=p8),
            RelaySettings(data_dir=tmp_path, push_fcm_credentials_file=tmp_path / "absent")):
        with pytest.raises(PushConfigError) as raised:
            build_providers(settings, tmp_path)
        assert "TOP-SECRET-MARKER" not in str(raised.value)
        assert str(tmp_path) in str(raised.value)


async def test_apns_keeps_one_provider_token_for_45_minutes_then_signs_another(
        tmp_path: Path) -> None:
    """Apple refuses tokens older than an hour, and too frequent new ones."""
    receiver = ApnsReceiver()
    clock = [time.time() - 50 * 60]
    async with serving(receiver, tls_dir=tmp_path / "tls") as base_url:
        provider = ApnsProvider(
            key=receiver.key, key_id=receiver.key_id, team_id=receiver.team_id,
            topic=receiver.topic, host=base_url, timeout_s=2.0, ttl_s=60,
            now=lambda: clock[0],
            verify=ssl.create_default_context(cafile=str(tmp_path / "tls" / "cert.pem")))
        target = PushTarget(provider="apns", token=DEVICE_TOKEN)
        with trio.fail_after(30):
            for advance_s in (0, 30 * 60, 16 * 60):
                clock[0] += advance_s
                assert (await provider.send(target, urgent=False)).result is PushResult.SENT
        await provider.aclose()
    assert receiver.problems == []
    tokens = [item.headers["authorization"] for item in receiver.received]
    assert tokens[0] == tokens[1] != tokens[2]


async def test_fcm_renews_its_access_token_before_it_expires(tmp_path: Path) -> None:
    receiver = FcmReceiver()
    clock = [time.time() - 3300]  # the last send happens now: the service checks iat
    async with serving(receiver) as base_url:
        credentials = tmp_path / "fcm.json"
        credentials.write_text(json.dumps(receiver.make_account()))
        from relay.push_fcm import load_fcm_credentials

        provider = FcmProvider(credentials=load_fcm_credentials(credentials),
                               base_url=base_url, timeout_s=2.0, ttl_s=60,
                               now=lambda: clock[0])
        target = PushTarget(provider="fcm", token=FCM_TOKEN)
        with trio.fail_after(30):
            for advance_s in (0, 3000, 300):  # the token lasts 3599 s; renewed 300 s early
                clock[0] += advance_s
                assert (await provider.send(target, urgent=False)).result is PushResult.SENT
        await provider.aclose()
    assert receiver.problems == []
    assert receiver.token_requests == 2
    bearers = [item.headers["authorization"] for item in receiver.received]
    assert bearers[0] == bearers[1] != bearers[2]
