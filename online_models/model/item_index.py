"""The string item id -> table row mapping, which only ever grows.

Rows are handed out in arrival order and never reused, so a row means the same item
for the lifetime of a model lineage (deltas rely on it) and new ids never collide.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


class ItemIndex:
    """Ordered item ids with O(1) lookup; ``ids[row]`` is the item of ``row``."""

    __slots__ = ("ids", "_rows")

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self.ids: list[str] = []
        self._rows: dict[str, int] = {}
        self.add_all(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._rows

    def row(self, item_id: str) -> int:
        """The row of a known item, -1 for an unknown one."""
        return self._rows.get(item_id, -1)

    def add(self, item_id: str) -> int:
        """The item's row, appending the item if it is new."""
        row = self._rows.get(item_id)
        if row is None:
            row = len(self.ids)
            self._rows[item_id] = row
            self.ids.append(item_id)
        return row

    def add_all(self, item_ids: Iterable[str]) -> list[str]:
        """Add every unknown id (in order); return the ids that were new."""
        new: list[str] = []
        for item_id in item_ids:
            if item_id not in self._rows:
                self.add(item_id)
                new.append(item_id)
        return new

    def encode_histories(
        self, histories: Sequence[Sequence[str]], max_len: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded row matrix and attention mask (B x max_len) of the known items.

        Unknown ids are dropped; the most recent ``max_len`` known items are kept, so the
        last column is always the latest click (or padding for an empty history).
        """
        rows = np.zeros((len(histories), max_len), dtype=np.int64)
        mask = np.zeros((len(histories), max_len), dtype=np.int64)
        lookup = self._rows
        for i, history in enumerate(histories):
            known = [r for r in (lookup.get(item) for item in history) if r is not None]
            known = known[-max_len:]
            if known:
                rows[i, max_len - len(known) :] = known
                mask[i, max_len - len(known) :] = 1
        return rows, mask
