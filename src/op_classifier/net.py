"""Ports on this machine: one that is free now, and why one cannot be listened on."""

from __future__ import annotations

import errno
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port of host that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def port_problem(host: str, port: int) -> str | None:
    """Why host:port cannot be listened on ("taken", or the system's reason), or None when it can.

    Bound with SO_REUSEADDR as servers bind: a port left in TIME_WAIT is free, one with a listener is
    not (also one held with SO_REUSEPORT, as gRPC holds its ports). host "" means every interface,
    IPv4 and IPv6 together where the system has both (as JAX's coordinator listens).
    """
    dualstack = host == "" and socket.has_dualstack_ipv6()
    family = socket.AF_INET6 if dualstack or ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family, dualstack_ipv6=dualstack):
            return None
    except OSError as error:
        return "taken" if error.errno == errno.EADDRINUSE else (error.strerror or str(error))
