"""The Cryptopass wire protocol, sans-IO: frames, codec, state machines, limits, error codes."""
