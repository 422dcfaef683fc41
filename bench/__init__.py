"""cryptopass-bench: load generator for Cryptopass relays."""
