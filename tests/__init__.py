"""The test suite. Its shared helper modules are rewritten by pytest like test modules, so that
their ``assert`` statements keep checking under ``python -O`` (scripts/run-tests runs the suite
a second time with PYTHONOPTIMIZE=1 to prove that no behaviour depends on ``assert``)."""

import pytest

pytest.register_assert_rewrite(
    "tests.account_conformance",
    "tests.account_support",
    "tests.admin_conformance",
    "tests.admin_support",
    "tests.bench_support",
    "tests.client_peer_harness",
    "tests.postgres_schemas",
    "tests.prekey_conformance",
    "tests.prekey_samples",
    "tests.push_conformance",
    "tests.relay_processes",
    "tests.sealed_support",
    "tests.storage_conformance",
)
