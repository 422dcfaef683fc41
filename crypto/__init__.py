"""End-to-end cryptography for Cryptopass (pure: no I/O)."""
