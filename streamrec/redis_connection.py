"""Every Redis client streamrec makes: one Redis server, or a Redis Cluster.

``STREAMREC_REDIS_URL`` selects the mode by its scheme:

- ``redis://`` / ``rediss://`` (TLS) / ``unix://``: one server, ``redis.Redis.from_url``
  (query options as redis-py reads them);
- ``redis+cluster://[user:password@]host:port[,host:port...][/0]`` and
  ``rediss+cluster://`` (TLS): a Redis Cluster found through the listed seed nodes (any
  reachable one is enough; the client learns the others and the slot map from it). A
  cluster has only database 0; query options are not read.

``connect_redis`` and ``connect_redis_async`` pass timeouts, the retry policy and decoding
through to either kind; the returned clients share the commands streamrec uses. What
differs on a cluster, and where streamrec meets it: commands that touch several keys need
them in one hash slot (``streamrec/redis_keys.py`` tags such keys), pipelines are split
per node (one round trip per node), ``scan_iter`` walks every primary, and a cluster client asks the
seeds for the slot map when it is made (it raises if none answers; a single-node client
connects on first use). ``primary_keys`` names one key per primary, for state that must
notice one primary restarting empty (``flows/redis_resync.py``).

Passwords never reach a log or an error message: URLs are shown through ``mask_url``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import unquote

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException

from streamrec.settings import mask_url
from streamrec.structured_log import log_event

logger = logging.getLogger("streamrec.redis")

RedisClient: TypeAlias = redis.Redis | RedisCluster
AsyncRedisClient: TypeAlias = aioredis.Redis | AsyncRedisCluster

# Everything a Redis call can raise for an infrastructure reason: a cluster client also
# raises ``RedisClusterException`` (not a ``RedisError``) when no node can be reached.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS
DEFAULT_PORT = 6379
MAX_KEY_SEARCH = 1 << 17  # key names tried per primary_keys call: 8 per slot


@dataclass(frozen=True, slots=True)
class ClusterAddress:
    """Where a Redis Cluster is: its seed nodes and credentials, parsed from a URL."""

    seeds: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool


def parse_cluster_url(url: str) -> ClusterAddress | None:
    """The cluster a ``redis+cluster://`` or ``rediss+cluster://`` URL names; None for a
    single-node URL. Raises ValueError (with the URL masked) for a malformed one."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        return None
    masked = mask_url(url)
    at = rest.rfind("@")  # a password may hold an unencoded '@': the last one ends it
    userinfo, location = (rest[:at], rest[at + 1 :]) if at >= 0 else ("", rest)
    hosts, _, path = location.partition("/")
    if "?" in hosts or "?" in path or "#" in location:
        raise ValueError(f"cluster URL takes no query options: {masked}")
    if path not in ("", "0"):
        raise ValueError(f"a Redis Cluster has only database 0: {masked}")
    seeds = tuple(_seed(host, masked) for host in hosts.split(","))
    username, colon, password = userinfo.partition(":")
    return ClusterAddress(
        seeds=seeds,
        username=unquote(username) or None,
        password=unquote(password) if colon else None,
        tls=CLUSTER_SCHEMES[scheme.lower()],
    )


def _seed(address: str, masked: str) -> tuple[str, int]:
    host, colon, port = address.strip().rpartition(":")
    if not colon:
        host, port = address.strip(), str(DEFAULT_PORT)
    host = host.strip("[]")  # [::1]:7000
    if not host or not port.isdigit():
        raise ValueError(f"bad seed node {address!r} in {masked}")
    return host, int(port)


def connect_redis(url: str, **options: Any) -> RedisClient:
    """A synchronous client for ``url``.

    ``options`` are redis-py's: ``socket_timeout``, ``socket_connect_timeout``, ``retry``,
    ``retry_on_error``, ``decode_responses``, ``health_check_interval``... On a cluster,
    ``retry`` applies to the cluster client (it re-reads the slot map between tries) and
    options a cluster does not take (``retry_on_error``: it retries connection errors and
    timeouts itself) are left out.
    """
    cluster = parse_cluster_url(url)
    log_event(logger, "redis_client", logging.DEBUG, url=mask_url(url), cluster=bool(cluster))
    if cluster is None:
        return redis.Redis.from_url(url, **options)
    options.pop("retry_on_error", None)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster.seeds],
        username=cluster.username,
        password=cluster.password,
        ssl=cluster.tls,
        **options,
    )


def connect_redis_async(url: str, **options: Any) -> AsyncRedisClient:
    """An asyncio client for ``url`` (``connect_redis``'s options, plus ``max_connections``:
    for one server the pool's size, on a cluster per node). It connects on first use."""
    cluster = parse_cluster_url(url)
    log_event(logger, "redis_client", logging.DEBUG, url=mask_url(url), cluster=bool(cluster))
    if cluster is None:
        return aioredis.Redis(connection_pool=aioredis.ConnectionPool.from_url(url, **options))
    options.pop("retry_on_timeout", None)  # the cluster client retries timeouts itself
    return AsyncRedisCluster(
        startup_nodes=[AsyncClusterNode(host, port) for host, port in cluster.seeds],
        username=cluster.username,
        password=cluster.password,
        ssl=cluster.tls,
        **options,
    )


def primary_keys(client: RedisClient, base: str) -> list[str]:
    """One key per primary, each hashing into that primary's slots; ``[base]`` on one server.

    The key of a primary is ``{base}:{n}`` with the smallest ``n`` whose slot it serves, so
    every process derives the same names from the same slot map (a new slot map, a primary
    added or slots moved, can name other keys). A primary that serves no slot has none.
    """
    if not isinstance(client, RedisCluster):
        return [base]
    slots = client.nodes_manager.slots_cache
    serving = {nodes[0].name for nodes in slots.values() if nodes}  # a new node may serve none
    primaries = {node.name for node in client.get_primaries()} & serving
    found: dict[str, str] = {}
    for n in range(MAX_KEY_SEARCH):
        key = f"{base}:{n}"
        nodes = slots.get(client.keyslot(key))
        if nodes and nodes[0].name in primaries and nodes[0].name not in found:
            found[nodes[0].name] = key
            if len(found) == len(primaries):
                break
    return list(found.values())
