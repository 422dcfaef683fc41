"""The operator's monitoring kit: deploy/prometheus/alerts.yaml and deploy/grafana/cryptopass.json
name only metrics a running relay exports, promtool accepts the rules, and the metrics the
alerts need (certificate expiry, store reachability, LISTEN state, admin responses) say what
they claim."""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from relay.cluster import listen_application_name
from relay.server import RunningRelay, serve
from relay.settings import RelaySettings
from relay.telemetry import ADMIN_OUTCOMES
from tests.conftest import RelayUnderTest
from tests.postgres_schemas import fresh_schema, store_url
from tests.test_cluster import _terminate_backends
from tests.test_operations import sample, scrape

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "cryptopass.json"
DASHBOARD_ROWS = ["Traffic", "Latency", "Storage", "Enrolment", "Admin", "Cluster"]
ALERT_NAMES = {
    "CryptopassRelayDown", "CryptopassClusterNotListening", "CryptopassCommitLatencyHigh",
    "CryptopassCommitQueueBacklog", "CryptopassDeviceQueuesFull", "CryptopassDeviceQueueNearLimit",
    "CryptopassCertificateExpiresSoon", "CryptopassCertificateExpired",
    "CryptopassSmsGatewayFailing", "CryptopassRateLimitStorm", "CryptopassStoreUnreachable",
}
PROMETHEUS_OWN = {"up"}
"""Series Prometheus makes itself for every scrape target (the relay-down alert)."""

WAIT_S = 30
"""Bound on anything that could hang, not a timing assertion."""

METRIC = re.compile(r"\b(cryptopass_[a-z0-9_]+|up)\b(?!\s*\()")
"""A metric name in a PromQL expression (``up`` too; never a function call)."""


@pytest.fixture
def relay_settings(tmp_path: Path) -> RelaySettings:
    return RelaySettings(data_dir=tmp_path / "relay", listen_port=0,
                         metrics_listen="127.0.0.1:0", admin_listen="127.0.0.1:0",
                         sweep_interval_s=0.05)


@pytest.fixture
def cluster_url() -> Iterator[str]:
    with fresh_schema() as schema:
        yield store_url(schema)


def _alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def _dashboard_queries() -> list[str]:
    return [target["expr"] for panel in _dashboard()["panels"]
            for target in panel.get("targets", [])]


def _referenced_metrics() -> set[str]:
    expressions = [rule["expr"] for rule in _alert_rules()] + _dashboard_queries()
    names = {name for expression in expressions for name in METRIC.findall(expression)}
    assert "cryptopass_store_up" in names and "cryptopass_sms_total" in names  # sanity
    return names


def _exported_series(text: str) -> set[str]:
    """Every series name a scrape can carry, from its families (with or without samples)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",)}
    return {family.name + suffix for family in text_string_to_metric_families(text)
            for suffix in suffixes.get(family.type, ("",))}


def test_the_dashboard_is_valid_json_with_one_row_per_area() -> None:
    dashboard = _dashboard()
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert rows == DASHBOARD_ROWS
    graphs = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert graphs and all(panel["targets"] for panel in graphs)
    assert all(target["expr"].strip() for panel in graphs for target in panel["targets"])
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_every_alert_waits_and_says_how_bad_and_what_to_do() -> None:
    rules = _alert_rules()
    assert {rule["alert"] for rule in rules} == ALERT_NAMES
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_promtool_accepts_the_alert_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, (
        "promtool is missing: install Debian's prometheus package "
        "(scripts/run-tests does it with apt-get)")
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in result.stdout


async def test_a_relay_exports_every_metric_the_alerts_and_dashboard_name(
        relay: RelayUnderTest, cluster_url: str, tmp_path: Path, nursery: trio.Nursery) -> None:
    referenced = _referenced_metrics() - PROMETHEUS_OWN
    single = _exported_series((await scrape(relay)).text)
    assert referenced <= single, referenced - single
    # A cluster node exports the same families, and samples the cluster ones.
    running = await _cluster_node(cluster_url, tmp_path, nursery)
    try:
        text = (await _scrape(running)).text
        assert _exported_series(text) == single
        assert sample(text, "cryptopass_cluster_listening") == 1
        # A single node has no LISTEN connection: the family, and no sample to alert on.
        assert "\ncryptopass_cluster_listening " not in (await scrape(relay)).text
    finally:
        running.stop()


async def test_the_certificate_expiry_is_the_certificates_not_after(
        relay: RelayUnderTest) -> None:
    certificate = x509.load_pem_x509_certificate(relay.running.cert_path.read_bytes())
    exported = sample((await scrape(relay)).text,
                      "cryptopass_certificate_expiry_timestamp_seconds")
    assert exported == certificate.not_valid_after_utc.timestamp()


async def test_the_store_is_up_until_a_sweep_fails_and_up_again_after_one_succeeds(
        relay: RelayUnderTest, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sample((await scrape(relay)).text, "cryptopass_store_up") == 1
    store = relay.running.context.store
    expire = store.expire
    failed, succeeded = trio.Event(), trio.Event()

    async def unreachable(*, now: int, limit: int) -> int:
        failed.set()
        raise OSError("connection refused")

    passes = 0

    async def reachable(*, now: int, limit: int) -> int:
        nonlocal passes
        passes += 1
        if passes == 2:  # the first pass after the failure has finished
            succeeded.set()
        return await expire(now=now, limit=limit)

    monkeypatch.setattr(store, "expire", unreachable)
    with trio.fail_after(WAIT_S):
        await failed.wait()
    assert sample((await scrape(relay)).text, "cryptopass_store_up") == 0
    monkeypatch.setattr(store, "expire", reachable)  # the sweeper goes on after a failure
    with trio.fail_after(WAIT_S):
        await succeeded.wait()
    assert sample((await scrape(relay)).text, "cryptopass_store_up") == 1


async def test_a_failed_readiness_probe_marks_the_store_down(
        relay: RelayUnderTest, monkeypatch: pytest.MonkeyPatch) -> None:
    store = relay.running.context.store
    sweeping = trio.Event()

    async def stuck(*, now: int, limit: int) -> int:  # no sweep may mark the store up again
        sweeping.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def unreachable(organisation: str) -> None:
        raise OSError("connection refused")

    monkeypatch.setattr(store, "expire", stuck)
    with trio.fail_after(WAIT_S):
        await sweeping.wait()
    monkeypatch.setattr(store, "get_organisation", unreachable)
    assert (await scrape(relay, "/readyz")).status_code == 503
    assert sample((await scrape(relay)).text, "cryptopass_store_up") == 0


async def test_admin_responses_are_counted_by_outcome(relay: RelayUnderTest) -> None:
    before = (await scrape(relay)).text
    assert [sample(before, "cryptopass_admin_requests_total", outcome=outcome)
            for outcome in ADMIN_OUTCOMES] == [0, 0, 0]
    address = relay.running.context.admin_address
    assert address is not None
    verify = ssl.create_default_context(cafile=str(relay.running.cert_path))
    async with httpx.AsyncClient(base_url=f"https://{address[0]}:{address[1]}", verify=verify,
                                 timeout=10) as admin:
        statuses = [(await admin.get(path)).status_code
                    for path in ("/login", "/login", "/api/v1/users", "/api/v1/no-such-thing")]
    assert statuses[:2] == [200, 200] and all(400 <= status < 500 for status in statuses[2:]), \
        statuses
    after = (await scrape(relay)).text
    assert sample(after, "cryptopass_admin_requests_total", outcome="ok") == 2
    assert sample(after, "cryptopass_admin_requests_total", outcome="client_error") == 2
    assert sample(after, "cryptopass_admin_requests_total", outcome="server_error") == 0


async def test_a_cluster_node_that_lost_its_listen_connection_says_so(
        cluster_url: str, tmp_path: Path, nursery: trio.Nursery) -> None:
    running = await _cluster_node(cluster_url, tmp_path, nursery)
    node = running.context.cluster
    assert node is not None
    reconnecting, may_reconnect = trio.Event(), trio.Event()
    connect_listener = node.connect_listener

    async def gated_connect_listener() -> object:
        reconnecting.set()
        await may_reconnect.wait()
        return await connect_listener()

    node.connect_listener = gated_connect_listener  # type: ignore[method-assign]
    try:
        before = (await _scrape(running)).text
        assert sample(before, "cryptopass_cluster_listening") == 1
        assert sample(before, "cryptopass_cluster_listen_reconnections_total") == 0
        _terminate_backends(cluster_url, _listen_application_name(running))
        with trio.fail_after(WAIT_S):
            await reconnecting.wait()
        assert sample((await _scrape(running)).text, "cryptopass_cluster_listening") == 0
        may_reconnect.set()
        with trio.fail_after(WAIT_S):
            await node.listening.wait()  # counted as a reconnection in the same step
        after = (await _scrape(running)).text
        assert sample(after, "cryptopass_cluster_listening") == 1
        assert sample(after, "cryptopass_cluster_listen_reconnections_total") == 1
    finally:
        running.stop()


async def _cluster_node(cluster_url: str, tmp_path: Path,
                        nursery: trio.Nursery) -> RunningRelay:
    """A relay on PostgreSQL (a cluster node of its own) serving /metrics."""
    node_name = f"monitoring-{uuid.uuid4().hex}"  # application names are database-wide
    settings = RelaySettings(data_dir=tmp_path / node_name, listen_port=0, store=cluster_url,
                             node_name=node_name, metrics_listen="127.0.0.1:0",
                             admin_listen="127.0.0.1:0",
                             enrolment_secret_file=tmp_path / "enrolment.secret")
    running: RunningRelay = await nursery.start(serve, settings)
    return running


def _listen_application_name(running: RunningRelay) -> str:
    node = running.context.cluster
    assert node is not None
    return listen_application_name(node.node_name)


async def _scrape(running: RunningRelay, path: str = "/metrics") -> httpx.Response:
    address = running.context.operations_address
    assert address is not None
    with trio.fail_after(10):
        async with httpx.AsyncClient() as http:
            return await http.get(f"http://{address[0]}:{address[1]}{path}")
