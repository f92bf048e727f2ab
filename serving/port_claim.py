"""Refusing to share the serving port with another server.

granian's workers each bind the port with SO_REUSEPORT, which lets them share it among
themselves, but also lets a second ``streamrec serve`` (or anything else of the same
user with SO_REUSEPORT) bind the same port without an error and silently take part of
the traffic, with its own settings (another model, no token). ``claim_port`` runs in the
parent process before granian binds, and refuses in two ways:

1. **One serve per port and machine.** An abstract Unix socket named after the port is
   bound for the life of the process (Linux only, where granian binds per worker). The
   kernel releases it when the process ends, however it ends, so no stale lock file
   outlives a crash, and of two serves started at the same instant exactly one gets it:
   this closes the gap between the check below and granian's own bind. It is keyed by
   the port alone, so two serves on different addresses with the same port are refused
   too (the conservative choice: traffic to a wildcard address would be shared).
2. **Nothing else listens there.** A plain bind of host:port (SO_REUSEADDR, so
   connections of a previous run in TIME_WAIT do not count, but not SO_REUSEPORT) fails
   when any socket is bound there: an older server, another program.

granian's workers bind after the check, and a worker respawned later binds again
without one: they share the port among themselves as before.
"""

from __future__ import annotations

import socket
import sys


class PortInUseError(Exception):
    """Another server holds or listens on the port; serving must not start."""


def claim_port(host: str, port: int) -> socket.socket | None:
    """Claim ``port`` for this process, or raise ``PortInUseError`` saying who has it.

    Keep the returned socket (None off Linux) open while serving: closing it, or the
    process ending, releases the claim.
    """
    claim = None
    if sys.platform == "linux":
        claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            claim.bind(f"\0streamrec-serve-port-{port}")
        except OSError:
            claim.close()
            raise PortInUseError(
                f"port {port} is held by another streamrec serve on this machine"
            ) from None
    try:
        _probe_bind(host, port)
    except OSError as exc:
        if claim is not None:
            claim.close()
        raise PortInUseError(f"{host}:{port} is not free: {exc.strerror}") from None
    return claim


def _probe_bind(host: str, port: int) -> None:
    """Bind ``host:port`` without SO_REUSEPORT and let go at once; raises ``OSError``."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
