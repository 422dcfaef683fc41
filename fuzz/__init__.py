"""Fuzzing the wire protocol: the checks every fuzzer applies (``fuzz.checks``), the one-input
targets a coverage-guided fuzzer drives (``fuzz.targets``), their corpus (``fuzz/corpus``, made
by ``python -m fuzz.make_corpus``) and the atheris runner (``python -m fuzz.run``).

docs/SECURITY.md, "Fuzzing", says how to run it. ``tests/test_fuzz_protocol.py`` drives the same
checks with hypothesis, and runs every corpus input through the targets, so neither can rot.
"""
