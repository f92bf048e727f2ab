"""Item -> category data for the category filter: the Redis hash and a row index over it.

The hash ``RedisKeys.item_categories`` (item id -> category) is written by whoever sees
click events with categories (the feature flow; the serving benchmark and tests write it
themselves). Serving never reads it on the request path: it re-reads it in the background
and builds a ``CategoryIndex`` aligned with the model's item rows, so a filtered request
costs one dictionary lookup and a fancy-index over the candidates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from streamrec.redis_connection import RedisClient
from streamrec.redis_keys import RedisKeys

_EMPTY_ROWS = np.empty(0, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class CategoryIndex:
    """For each category, the sorted model rows of its items (immutable once built).

    ``of_item`` is the item -> category map it was built from (the popular fallback
    filters items by it, as they need not be model rows).
    """

    rows: Mapping[str, np.ndarray] = field(default_factory=dict)
    of_item: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, item_ids: Sequence[str], categories: Mapping[str, str]) -> CategoryIndex:
        """Group the rows of ``item_ids`` by their category; unknown items join none."""
        grouped: dict[str, list[int]] = {}
        for row, item_id in enumerate(item_ids):
            category = categories.get(item_id)
            if category is not None:
                grouped.setdefault(category, []).append(row)
        rows = {name: np.asarray(found, dtype=np.int64) for name, found in grouped.items()}
        return cls(rows, categories)

    def candidates(self, categories: Sequence[str]) -> np.ndarray:
        """The rows in any of ``categories`` (sorted, no duplicates); empty if none match."""
        found = [self.rows[name] for name in categories if name in self.rows]
        if not found:
            return _EMPTY_ROWS
        if len(found) == 1:
            return found[0]
        return np.unique(np.concatenate(found))


def read_item_categories(client: RedisClient, keys: RedisKeys) -> dict[str, str]:
    """The whole item -> category hash, scanned in chunks so Redis is never blocked long."""
    mapping: dict[str, str] = {}
    for item_id, category in client.hscan_iter(keys.item_categories, count=5000):
        mapping[item_id.decode()] = category.decode()
    return mapping
