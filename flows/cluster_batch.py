"""One output batch of the flow's Redis writes, sent to a Redis Cluster one node at a time.

The publisher queues its writes here as it would on a pipeline (``hset``, ``zadd``,
``delete``, ``zremrangebyrank``, ``rename``, and the sessions for the session script).
``execute`` groups them by the node that serves each key's slot (the client's slot map) and
sends one plain pipeline per node: a batch costs one round trip per primary it touches,
whatever its size. redis-py's own cluster pipeline would route each command separately
(about as costly per command as packing it), and it refuses RENAME and cross-slot scripts.

Session hashes go through the flow's Lua script as on one server (``script_args`` makes
its arguments), at most ``sessions_per_script`` per call, each call holding only sessions
of one node. A script on a cluster may only touch keys of its node (any slot there, with
the script flag ``allow-cross-slot-keys``, Redis 7); its first session key is declared so
the node can check the call landed right. If the slot map changed meanwhile (a failover,
slots moved, a node restarting), Redis answers MOVED or refuses the script: the client
reads the slot map again and the whole batch goes out again, with backoff, up to
``retries`` times. That is safe because every write sets absolute values
(``flows/publisher.py``); a RENAME repeated without its ZADDs cannot happen, since a
node's commands are one pipeline.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script

from streamrec.redis_connection import REDIS_ERRORS
from streamrec.session_features import FIELDS

SESSION_STRINGS = 1 + len(FIELDS)  # a session's key and its values

ALLOW_CROSS_SLOT = "#!lua flags=allow-cross-slot-keys\n"


class ClusterBatch:
    """Writes queued for one round trip per node; ``execute`` sends them."""

    def __init__(
        self,
        client: RedisCluster,
        script: Script,
        script_args: Callable[[list[bytes]], list[Any]],
        sessions_per_script: int,
        retries: int,
        backoff_s: Callable[[int], float],
    ) -> None:
        self._client = client
        self._script = script
        self._script_args = script_args
        self._per_script = sessions_per_script
        self._retries = retries
        self._backoff_s = backoff_s
        self._commands: list[tuple[str, str, tuple[Any, ...], dict[str, Any]]] = []
        self._sessions: list[bytes] = []

    def __len__(self) -> int:
        return len(self._commands)

    # -- queueing, as on a pipeline -------------------------------------------------

    def hset(self, name: str, *args: Any, **kwargs: Any) -> None:
        self._commands.append((name, "hset", (name, *args), kwargs))

    def zadd(self, name: str, *args: Any, **kwargs: Any) -> None:
        self._commands.append((name, "zadd", (name, *args), kwargs))

    def delete(self, name: str) -> None:
        self._commands.append((name, "delete", (name,), {}))

    def zremrangebyrank(self, name: str, start: int, end: int) -> None:
        self._commands.append((name, "zremrangebyrank", (name, start, end), {}))

    def rename(self, src: str, dst: str) -> None:
        """Both keys must share a slot (a hash tag): the node serving ``src`` runs it."""
        self._commands.append((src, "rename", (src, dst), {}))

    def queue_sessions(self, strings: list[bytes]) -> None:
        """Sessions for the session script: per session, its key and its values."""
        self._sessions += strings

    # -- sending --------------------------------------------------------------------

    def execute(self) -> None:
        """Send everything, one pipeline per node; on a changed slot map or a node that
        does not answer, read the map again and send it all again (bounded)."""
        for attempt in range(self._retries + 1):
            try:
                self._send()
                return
            except REDIS_ERRORS:
                if attempt == self._retries:
                    raise
                time.sleep(self._backoff_s(attempt))
                # No seed answering yet (a failover in progress) is one more failed try.
                with contextlib.suppress(*REDIS_ERRORS):
                    self._client.nodes_manager.initialize()

    def _send(self) -> None:
        pipes: dict[str, Any] = {}
        nodes = self._client.nodes_manager

        def pipe_for(key: str | bytes) -> Any:
            node: ClusterNode = nodes.get_node_from_slot(self._client.keyslot(key))
            pipe = pipes.get(node.name)
            if pipe is None:
                pipe = self._client.get_redis_connection(node).pipeline(transaction=False)
                pipes[node.name] = pipe
            return pipe

        for key, method, args, kwargs in self._commands:
            getattr(pipe_for(key), method)(*args, **kwargs)
        for key, strings in self._session_calls(pipe_for):
            self._script(keys=[key], args=self._script_args(strings), client=pipe_for(key))
        for pipe in pipes.values():
            pipe.execute()

    def _session_calls(self, pipe_for: Callable[[bytes], Any]) -> list[tuple[bytes, list[bytes]]]:
        """The script calls: (first key, sessions), each with sessions of one node only."""
        sessions = self._sessions
        per_node: dict[int, list[bytes]] = {}
        calls: list[tuple[bytes, list[bytes]]] = []
        for start in range(0, len(sessions), SESSION_STRINGS):
            node = id(pipe_for(sessions[start]))
            chunk = per_node.get(node)
            if chunk is None:
                chunk = per_node[node] = []
            chunk += sessions[start : start + SESSION_STRINGS]
            if len(chunk) == self._per_script * SESSION_STRINGS:
                calls.append((chunk[0], chunk))
                del per_node[node]
        calls += [(chunk[0], chunk) for chunk in per_node.values()]
        return calls
