"""Cryptopass Relay: QUIC relay for sealed envelopes."""
