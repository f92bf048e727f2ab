"""The registry's metadata in Redis: version hashes, their zset, the pointer, the counter.

Keys (``streamrec.redis_keys``): ``model_version(n)`` hashes (``VersionInfo``), the
``model_versions`` zset (scored by number), ``model_current``, ``model_canary`` and the
``model_sequence`` counter; new current versions are announced on ``model_updates``,
canary changes on ``model_canary_updates``. The rules (what becomes current, what loads)
are ``weight_registry``'s; this module only reads and writes these keys, each change in
one round trip, atomically (a script or MULTI/EXEC). On a Redis Cluster they all share one
hash slot (``redis_keys``), which scripts and transactions need; a pointer moves and is
announced in one script (a cluster client refuses PUBLISH in a pipeline), and the
announcement is a classic PUBLISH, which a cluster passes to subscribers on every node.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from online_models.registry.version_info import VersionInfo
from streamrec.redis_connection import RedisClient
from streamrec.redis_keys import RedisKeys

# INCR the counter only if it exists: a missing one means a new or reset Redis, and the
# caller first raises it above every stored version.
_ALLOCATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCR', KEYS[1]) end
return false
"""
_RAISE_COUNTER = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""
# Remove the canary pointer (if ARGV[1] is set: only while it still is that version) and
# announce it; 1 when removed.
_CLEAR_CANARY = """
local current = redis.call('GET', KEYS[1])
if current == false or (ARGV[1] ~= '' and current ~= ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', KEYS[2], '')
return 1
"""
# Point KEYS[1] at ARGV[1] (if ARGV[2] is set: only while it still is that version) and
# announce it on KEYS[2]; 1 when set (compare-and-set).
_MOVE_POINTER = """
if ARGV[2] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"""


class VersionIndex:
    """Version metadata under one key prefix."""

    def __init__(self, keys: RedisKeys, client: RedisClient) -> None:
        self.keys = keys
        self.client = client
        self._allocate = client.register_script(_ALLOCATE)
        self._raise_counter = client.register_script(_RAISE_COUNTER)
        self._clear_canary = client.register_script(_CLEAR_CANARY)
        self._move_pointer = client.register_script(_MOVE_POINTER)

    # -- reading -------------------------------------------------------------------

    def current(self) -> int | None:
        raw = self.client.get(self.keys.model_current)
        return None if raw is None else int(raw)

    def canary(self) -> int | None:
        raw = self.client.get(self.keys.model_canary)
        return None if raw is None else int(raw)

    def info(self, version: int) -> VersionInfo | None:
        raw = self.client.hgetall(self.keys.model_version(version))
        return VersionInfo.from_redis(raw) if raw else None

    def infos(self, limit: int) -> list[VersionInfo]:
        """Metadata of the newest ``limit`` versions, oldest first."""
        numbers = self.client.zrevrange(self.keys.model_versions, 0, limit - 1)
        pipe = self.client.pipeline(transaction=True)
        for number in reversed(numbers):
            pipe.hgetall(self.keys.model_version(int(number)))
        return [VersionInfo.from_redis(raw) for raw in pipe.execute() if raw]

    def numbers(self, at_most: int | None = None, limit: int | None = None) -> list[int]:
        """Registered version numbers at or below ``at_most``, newest first."""
        top = "+inf" if at_most is None else at_most
        if limit is None:
            found = self.client.zrevrangebyscore(self.keys.model_versions, top, "-inf")
        else:
            found = self.client.zrevrangebyscore(self.keys.model_versions, top, "-inf", 0, limit)
        return [int(number) for number in found]

    def snapshots(self, at_most: int) -> Iterator[VersionInfo]:
        """Snapshots at or below ``at_most``, newest first."""
        for number in self.numbers(at_most):
            info = self.info(number)
            if info is not None and info.kind == "snapshot":
                yield info

    def count(self) -> int:
        return int(self.client.zcard(self.keys.model_versions))

    # -- writing -------------------------------------------------------------------

    def register(self, info: VersionInfo) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.keys.model_version(info.version), mapping=info.to_redis())
        pipe.zadd(self.keys.model_versions, {str(info.version): info.version})
        pipe.execute()

    def unregister(self, version: int) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(self.keys.model_versions, str(version))
        pipe.delete(self.keys.model_version(version))
        pipe.execute()

    def allocate(self, floor: Callable[[], int]) -> int:
        """A new version number; a missing counter first restarts above ``floor()``."""
        sequence = self.keys.model_sequence
        version = self._allocate(keys=[sequence])
        if version is None:
            self.raise_counter(floor())
            version = self._allocate(keys=[sequence])
        return int(version)

    def raise_counter(self, floor: int) -> None:
        """Make the next number above ``floor`` (the counter never goes down)."""
        self._raise_counter(keys=[self.keys.model_sequence], args=[floor])

    def set_current(self, version: int, only_if_none: bool = False) -> bool:
        """Point ``current`` at ``version`` and announce it (with ``only_if_none``: only
        where no version is current); whether it was set."""
        if only_if_none:
            if not self.client.set(self.keys.model_current, version, nx=True):
                return False
            self.client.publish(self.keys.model_updates, str(version))
            return True
        return self.flip(version, None)

    def set_canary(self, version: int) -> None:
        """Point ``canary`` at ``version`` and announce it."""
        keys = [self.keys.model_canary, self.keys.model_canary_updates]
        self._move_pointer(keys=keys, args=[version, ""])

    def clear_canary(self, only_if: int | None = None) -> bool:
        """Remove ``canary`` (with ``only_if``: only while it points there) and announce
        it with an empty payload; whether it was removed."""
        keys = [self.keys.model_canary, self.keys.model_canary_updates]
        return bool(self._clear_canary(keys=keys, args=["" if only_if is None else only_if]))

    def flip(self, version: int, expected_current: int | None) -> bool:
        """Point ``current`` at ``version`` if it still is ``expected_current`` (None: in
        any case) and announce it; whether it was set (compare-and-set)."""
        keys = [self.keys.model_current, self.keys.model_updates]
        expected = "" if expected_current is None else str(expected_current)
        return bool(self._move_pointer(keys=keys, args=[version, expected]))
