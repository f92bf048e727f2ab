"""A round-robin TCP balancer for tests: one address in front of several servers, as a
Kubernetes Service or a cloud load balancer puts one in front of serving replicas."""

from __future__ import annotations

import itertools
import socket
import socketserver
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress


def _pipe(source: socket.socket, target: socket.socket) -> None:
    with suppress(OSError):  # either side hung up
        while data := source.recv(65536):
            target.sendall(data)
    for sock in (source, target):
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@contextmanager
def round_robin(backends: list[int]) -> Iterator[tuple[int, Counter[int]]]:
    """Listen on a free port; each new connection goes to the next of ``backends`` (ports
    on 127.0.0.1). Yields (the port, connections per backend)."""
    turns = itertools.cycle(backends)
    lock = threading.Lock()
    counts: Counter[int] = Counter()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with lock:
                backend = next(turns)
                counts[backend] += 1
            with socket.create_connection(("127.0.0.1", backend), timeout=10) as upstream:
                back = threading.Thread(target=_pipe, args=(upstream, self.request), daemon=True)
                back.start()
                _pipe(self.request, upstream)
                back.join(10)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], counts
    finally:
        server.shutdown()
        server.server_close()
