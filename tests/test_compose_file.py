"""deploy/compose.yaml describes the cluster docs/CLUSTER.md asks for: two relay nodes with
their own UDP ports and data volumes, the same enrolment secret and certificate, valid
``CRYPTOPASS_*`` settings, health checks, the admin console on one node; its PostgreSQL image
file passes hadolint. scripts/compose-test runs the stack itself (podman-compose)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from relay.config import environment_variable, load_config
from relay.settings import RelaySettings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "compose.yaml"
HADOLINT = Path(sys.executable).parent / "hadolint"
RELAYS = ("relay-1", "relay-2")


def _with_defaults(text: str) -> str:
    """The file as Compose reads it when none of its variables is set: ``${X:-d}`` is d."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text)


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load(_with_defaults(COMPOSE.read_text()))
    assert isinstance(loaded, dict)
    return loaded


def _service(name: str) -> dict[str, Any]:
    service = _compose()["services"][name]
    assert isinstance(service, dict)
    return service


def _environment(name: str) -> dict[str, str]:
    return {key: str(value) for key, value in _service(name)["environment"].items()}


def _secret_of(path: str) -> str:
    # A path under /run/secrets/ is the compose secret of that name.
    assert path.startswith("/run/secrets/"), path
    return path.removeprefix("/run/secrets/")


def test_the_cluster_is_postgres_and_two_relays_of_one_image() -> None:
    compose = _compose()
    assert set(compose["services"]) == {"postgres", *RELAYS}
    assert _service("relay-1")["image"] == _service("relay-2")["image"]
    assert "${CRYPTOPASS_" not in _with_defaults(COMPOSE.read_text())  # every variable defaulted


def test_each_relay_has_its_own_udp_port_name_and_data_volume() -> None:
    host_ports, names, volumes = set(), set(), set()
    for relay in RELAYS:
        udp = [port for port in _service(relay)["ports"] if str(port).endswith("/udp")]
        assert len(udp) == 1
        host, container = str(udp[0]).removesuffix("/udp").rsplit(":", 1)
        assert container == _environment(relay)["CRYPTOPASS_LISTEN_PORT"]
        host_ports.add(host)
        names.add(_environment(relay)["CRYPTOPASS_NODE_NAME"])
        [data] = [v.split(":")[0] for v in _service(relay)["volumes"] if v.endswith(":/data")]
        volumes.add(data)
    assert host_ports == {"4433", "4434"}
    assert len(names) == len(RELAYS)  # a node name selects a LISTEN channel: never shared
    assert len(volumes) == len(RELAYS)  # a data directory belongs to one relay
    declared = set(_compose()["volumes"])
    assert volumes <= declared and "pgdata" in declared


def test_the_relays_read_the_same_secret_files_from_compose_secrets() -> None:
    declared = _compose()["secrets"]
    for setting in ("CRYPTOPASS_ENROLMENT_SECRET_FILE", "CRYPTOPASS_CERT", "CRYPTOPASS_KEY",
                    "PGPASSFILE"):
        paths = {_environment(relay)[setting] for relay in RELAYS}
        assert len(paths) == 1, setting  # every node reads the same secret (docs/CLUSTER.md)
        name = _secret_of(paths.pop())
        assert "file" in declared[name]
        for relay in RELAYS:
            assert name in _service(relay)["secrets"]
    password = _environment("postgres")["POSTGRES_PASSWORD_FILE"]
    assert _secret_of(password) in _service("postgres")["secrets"]


def test_the_relay_settings_are_valid_and_name_real_settings() -> None:
    known = {environment_variable(f.name) for f in dataclasses.fields(RelaySettings)}
    for relay in RELAYS:
        environment = _environment(relay)
        settings = {k: v for k, v in environment.items() if k.startswith("CRYPTOPASS_")}
        assert set(settings) <= known, set(settings) - known  # a misspelt name is ignored
        config = load_config(environ=settings)
        assert config.warnings == []
        loaded = config.settings
        assert loaded.store is not None and loaded.store.startswith("postgresql://")
        user = loaded.store.removeprefix("postgresql://").split("@")[0]
        assert user == _environment("postgres")["POSTGRES_USER"]
        assert loaded.metrics_listen is not None


def test_the_admin_console_is_on_relay_1_only_and_published_on_loopback() -> None:
    admin = _environment("relay-1")["CRYPTOPASS_ADMIN_LISTEN"]
    assert "CRYPTOPASS_ADMIN_LISTEN" not in _environment("relay-2")
    port = admin.rsplit(":", 1)[1]
    assert f"127.0.0.1:{port}:{port}/tcp" in _service("relay-1")["ports"]
    assert not any(str(p).endswith("/tcp") for p in _service("relay-2").get("ports", []))


def test_health_checks_ask_readiness_and_pg_isready() -> None:
    for relay in RELAYS:
        port = _environment(relay)["CRYPTOPASS_METRICS_LISTEN"].rsplit(":", 1)[1]
        assert f"127.0.0.1:{port}/readyz" in " ".join(_service(relay)["healthcheck"]["test"])
    assert "pg_isready" in _service("postgres")["healthcheck"]["test"]
    for service in ("postgres", *RELAYS):
        assert _service(service)["restart"] == "unless-stopped"


def test_the_postgres_containerfile_passes_hadolint() -> None:
    result = subprocess.run([str(HADOLINT), "--failure-threshold", "info",
                             "deploy/postgres/Containerfile"],
                            cwd=ROOT, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
