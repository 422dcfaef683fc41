"""The package layout holds: an app developer's import of the client loads no server code.

The import contracts themselves (pyproject.toml, ``[tool.importlinter]``) run in
scripts/run-tests; this test checks the consequence that matters to app developers in a fresh
interpreter, where nothing else has been imported yet.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

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


def test_the_shared_test_helpers_keep_their_asserts_under_python_optimize() -> None:
    # Each helper module with asserts must be registered for rewriting in tests/__init__.py:
    # otherwise `python -O` strips its asserts and the suites that use it check nothing.
    import tests

    registered = _registered_for_rewriting()
    helpers = {path.stem for path in Path(tests.__file__).parent.glob("*.py")
               if not path.stem.startswith("test_") and path.stem not in {"__init__", "conftest"}}
    with_asserts = {name for name in helpers
                    if "assert " in (Path(tests.__file__).parent / f"{name}.py").read_text()}
    assert {f"tests.{name}" for name in with_asserts} <= registered


def _registered_for_rewriting() -> set[str]:
    source = (Path(__file__).parent / "__init__.py").read_text()
    return set(re.findall(r'"(tests\.\w+)"', source))
