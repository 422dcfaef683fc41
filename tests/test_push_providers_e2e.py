"""FCM and APNs configured in a real relay subprocess, as an operator configures them (a service
account's key file and base URL; a .p8 key, its ids, the host and its CA), each waking a device
through its real loopback service: the settings reach the providers, and the pushes have the
shape and credentials the services check."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from bench.spawn import spawn_relay
from tests.push_receivers import ApnsReceiver, FcmReceiver, serving
from tests.relay_processes import connect, declare, enrol

TIMEOUT_S = 60
ALICE, BOB, CAROL = "+33612345678", "+33698765432", "+33687654321"
FCM_TOKEN = "bob-phone:APA91b" + "z" * 120
APNS_TOKEN = "c0" * 32


async def test_a_relay_wakes_android_and_ios_devices_through_fcm_and_apns(
        tmp_path: Path) -> None:
    fcm, apns = FcmReceiver(), ApnsReceiver()
    async with serving(fcm) as fcm_url, serving(apns, tls_dir=tmp_path / "tls") as apns_url:
        credentials, key = tmp_path / "fcm.json", tmp_path / "AuthKey.p8"
        credentials.write_text(json.dumps(fcm.make_account()))
        key.write_bytes(apns.key_pem())
        settings = {
            "push_fcm_credentials_file": credentials, "push_fcm_base_url": fcm_url,
            "push_apns_key_file": key, "push_apns_key_id": apns.key_id,
            "push_apns_team_id": apns.team_id, "push_apns_topic": apns.topic,
            "push_apns_host": apns_url, "push_apns_ca_file": tmp_path / "tls" / "cert.pem"}
        arguments = [word for name, value in settings.items()
                     for word in ("--set", f"{name}={value}")]
        data = tmp_path / "D"
        async with spawn_relay(data, *arguments) as relay:
            await declare(None, data, [ALICE, BOB, CAROL], organisation="acme")
            alice, bob, carol = [await enrol(relay, phone) for phone in (ALICE, BOB, CAROL)]
            with trio.fail_after(TIMEOUT_S):
                for device, provider, token in ((bob, "fcm", FCM_TOKEN),
                                                (carol, "apns", APNS_TOKEN)):
                    async with connect(relay) as client:
                        await client.authenticate(device.user_id, device.device_id,
                                                  device.key)
                        await client.set_push_target(provider, token)
                        assert await client.get_push_target() == (provider, token)
        # A new relay on the same store: the targets were kept, and no connection of Bob's or
        # Carol's can still be closing when the messages commit (they are plainly away).
        async with spawn_relay(data, *arguments) as relay:
            with trio.fail_after(TIMEOUT_S):
                async with connect(relay) as client:
                    await client.authenticate(alice.user_id, alice.device_id, alice.key)
                    await client.send(bob.user_id, {bob.device_id: b"to bob"},
                                      client_message_id=1)
                    await client.send(carol.user_id, {carol.device_id: b"to carol"},
                                      client_message_id=2, urgent=True)
                    sent_to_fcm = await fcm.wait_for(1)
                    sent_to_apns = await apns.wait_for(1)
    assert fcm.problems == [] and apns.problems == []
    assert fcm.token_requests == 1
    message = json.loads(sent_to_fcm[0].body)["message"]
    assert message == {"token": FCM_TOKEN, "data": {"wake": "1"},
                       "android": {"priority": "NORMAL", "ttl": "86400s"}}
    (ios,) = sent_to_apns
    assert ios.http_version == "2" and ios.path == f"/3/device/{APNS_TOKEN}"
    assert ios.headers["apns-priority"] == "10"  # the urgent envelope
    for body in (sent_to_fcm[0].body, ios.body):
        for secret in (b"to bob", b"to carol", ALICE.encode(), alice.user_id.encode()):
            assert secret not in body
    # The relay's log holds no device token, credential or access token.
    logged = json.dumps(relay.events)
    for secret in (FCM_TOKEN, APNS_TOKEN, *fcm.issued, fcm.account["private_key_id"],
                   ios.headers["authorization"].split()[1]):
        assert secret not in logged


def test_the_http_libraries_never_log_a_request() -> None:
    import logging

    import relay.push_http  # noqa: F401 (importing it quiets them)

    for library in ("httpx", "httpcore"):
        assert not logging.getLogger(library).isEnabledFor(logging.INFO)
