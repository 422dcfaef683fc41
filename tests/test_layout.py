"""The package layout holds: an app developer's import of the client loads no server code.

The import contracts themselves (pyproject.toml, ``[tool.importlinter]``) run in
scripts/run-tests; this test checks the consequence that matters to app developers in a fresh
interpreter, where nothing else has been imported yet.
"""

from __future__ import annotations

import json
import subprocess
import sys

SERVER_SIDE = ("relay", "storage", "enrolment", "bench")

_PROBE = """
import importlib, json, pkgutil, sys
import client
for module in pkgutil.walk_packages(client.__path__, "client."):
    importlib.import_module(module.name)
print(json.dumps(sorted(sys.modules)))
"""


def _modules_loaded_by(probe: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, timeout=60)
    loaded: list[str] = json.loads(result.stdout)
    return loaded


def test_importing_every_client_module_loads_nothing_of_the_server() -> None:
    loaded = _modules_loaded_by(_PROBE)
    assert "client.messenger" in loaded and "client.cli" in loaded  # the probe really ran
    server_modules = [name for name in loaded if name.split(".")[0] in SERVER_SIDE]
    assert server_modules == []


def test_the_wire_protocol_loads_no_io_and_no_clock_source() -> None:
    loaded = _modules_loaded_by(
        "import json, sys\n"
        "import wire.codec, wire.frames, wire.protocol, wire.phone\n"
        "print(json.dumps(sorted(sys.modules)))\n")
    assert "wire.protocol" in loaded
    for forbidden in ("trio", "aioquic", "transport", "storage", "relay", "client"):
        assert forbidden not in loaded, forbidden
