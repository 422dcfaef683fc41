"""Runs a fuzz target under atheris, coverage-guided (docs/SECURITY.md, "Fuzzing").

    python -m fuzz.run frame_decoder -max_total_time=600 /tmp/fuzz/decoder \
        fuzz/corpus/frame_decoder
    python -m fuzz.run server_protocol -max_total_time=600 /tmp/fuzz/server \
        fuzz/corpus/server_protocol
    python -m fuzz.run server_protocol /tmp/fuzz/crash-...     # replay one input

The first directory receives what the fuzzer finds (not the repository's corpus, which only
``python -m fuzz.make_corpus`` writes). Every argument after the target's name goes to
libFuzzer (``-help=1`` lists them). atheris is imported only here, so the targets and their
tests run without it; the project's modules are imported under
``atheris.instrument_imports`` so that the fuzzer sees their branches.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

__all__ = ["main"]

INSTRUMENTED = ("wire", "crypto", "fuzz.checks", "fuzz.targets")
"""What atheris instruments: the protocol (and what it imports of ours) and the checks."""


def main(argv: list[str]) -> None:
    """``argv``: this program, a target's name, then libFuzzer's arguments."""
    try:
        atheris = importlib.import_module("atheris")
    except ModuleNotFoundError:
        sys.exit("atheris is not installed: pip install atheris (docs/SECURITY.md, \"Fuzzing\")")
    with atheris.instrument_imports(include=list(INSTRUMENTED)):
        targets = importlib.import_module("fuzz.targets")
    names = sorted(targets.TARGETS)
    if len(argv) < 2 or argv[1] not in names:
        sys.exit(f"usage: python -m fuzz.run {{{','.join(names)}}} [libFuzzer arguments]")
    target: Callable[[bytes], None] = targets.TARGETS[argv[1]]
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
