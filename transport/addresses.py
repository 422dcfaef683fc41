"""Network addresses as operators and users type them, for both ends of a connection."""

from __future__ import annotations

__all__ = ["parse_host_port"]


def parse_host_port(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:4433`` for IPv6); raise ValueError with a clear message."""
    host, separator, port_text = text.rpartition(":")
    if not separator or not host or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return host.strip("[]"), port
