"""Claiming the serving port: refused while another server holds or listens on it."""

from __future__ import annotations

import socket
import sys

import pytest

from serving.port_claim import PortInUseError, claim_port
from streamrec.local_services import free_port


def worker_socket(port: int) -> socket.socket:
    """A socket bound the way granian's workers bind theirs (SO_REUSEPORT)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(8)
    return sock


def test_the_claim_leaves_the_port_to_its_own_workers_and_ends_on_close() -> None:
    port = free_port()
    claim = claim_port("127.0.0.1", port)
    workers = [worker_socket(port), worker_socket(port)]  # they share it among themselves
    for worker in workers:
        worker.close()
    if claim is not None:
        claim.close()
    again = claim_port("127.0.0.1", port)  # raises if the first claim outlived its close
    if again is not None:
        again.close()


@pytest.mark.skipif(sys.platform != "linux", reason="the claim socket is Linux-only")
def test_a_second_claim_of_the_same_port_is_refused_before_anything_binds_it() -> None:
    """Two serves started at the same instant: the check-then-bind window is closed."""
    port = free_port()
    claim = claim_port("127.0.0.1", port)
    try:
        with pytest.raises(PortInUseError, match="another streamrec serve"):
            claim_port("0.0.0.0", port)  # noqa: S104 - another address, same port
    finally:
        assert claim is not None
        claim.close()


def test_a_port_shared_with_so_reuseport_is_refused() -> None:
    """What granian's workers do: a second server would join them silently."""
    port = free_port()
    with (
        worker_socket(port),
        pytest.raises(PortInUseError, match=f"127.0.0.1:{port} is not free"),
    ):
        claim_port("127.0.0.1", port)
