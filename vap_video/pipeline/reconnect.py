"""Reconnect timing for cameras: backoff with full jitter, and a cheap TCP probe of the camera's port.

Kept apart from the reader so the policy can be read (and tuned, and tested) in one screen.
"""

from __future__ import annotations

import random
import socket
from urllib.parse import urlsplit

# Most seconds one probe's TCP connect may take (a dropped SYN must not hold the backoff loop).
PROBE_CONNECT_S = 1.0
_DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}


def probe_address(url: str) -> tuple[str, int] | None:
    """(host, port) that a cheap TCP probe can knock on, or None for inputs without one (files,
    devices, synthetic scenes, URLs without a host)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.hostname, port or _DEFAULT_PORTS[scheme]


def tcp_answers(address: tuple[str, int], timeout: float = PROBE_CONNECT_S) -> bool:
    """True when something accepts a TCP connection at `address` (closed again at once)."""
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def backoff_delay(attempt: int, initial: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, initial * 2**attempt)).

    Full jitter spreads the reconnects of many cameras that dropped together (a switch reboot),
    so they do not hammer the network video recorder in lockstep.
    """
    ceiling = min(cap, initial * (2.0 ** min(attempt, 60)))
    return (rng or random).uniform(0.0, ceiling)


__all__ = ["PROBE_CONNECT_S", "backoff_delay", "probe_address", "tcp_answers"]
