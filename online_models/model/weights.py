"""Model weights as plain data: what the registry stores and what serving scores with.

A ``ModelWeights`` is framework-free (numpy arrays keyed by parameter name plus the
ordered item ids), so the registry, serving and tests can handle it without torch.
Row ``i`` of every row tensor (``head.item_table``, ``head.item_bias`` and the
co-visitation table ``head.covis_items`` / ``head.covis_weight``) belongs to ``item_ids[i]``.
A ``WeightDelta`` holds what changed between two versions: the touched item rows, the
rows of items that appeared since the parent, and the dense tensors that changed.
Weights are never changed in place once built: a version made by ``apply_deltas`` shares
the arrays its delta left alone with its parent, and serving's scorer reads the row
tensors without copying them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streamrec.settings import ModelSettings

ITEM_TABLE = "head.item_table"
ITEM_BIAS = "head.item_bias"
COVIS_ITEMS = "head.covis_items"  # int32 successor rows, -1 = empty slot
COVIS_WEIGHT = "head.covis_weight"  # float32 decayed counts
ROW_TENSORS = (ITEM_TABLE, ITEM_BIAS, COVIS_ITEMS, COVIS_WEIGHT)
COVIS_NEIGHBOURS = 20  # default of ModelSettings.covis_neighbours (a unit test holds them equal)


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The sizes that fix every tensor's shape (taken from ``ModelSettings``)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    max_seq_len: int
    covis_neighbours: int = COVIS_NEIGHBOURS  # K slots per co-visitation row

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> ModelShape:
        return cls(
            settings.hidden_size,
            settings.num_layers,
            settings.num_heads,
            settings.max_seq_len,
            settings.covis_neighbours,
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "max_seq_len": self.max_seq_len,
            "covis_neighbours": self.covis_neighbours,
        }


@dataclass(frozen=True, slots=True)
class RowChanges:
    """The rows of a version that may differ from those of ``base``, an earlier version
    of its lineage: every row a delta since ``base`` touched, new items' rows included."""

    base: int
    rows: np.ndarray  # sorted, distinct, int64


@dataclass(slots=True)
class ModelWeights:
    """One complete model version: every tensor plus the item ids the rows stand for.

    ``changes`` is set when the registry loaded this version by applying deltas to
    weights the caller already held (``WeightRegistry.load(base=...)``), so that a
    follower can update what it built from those rows only; None otherwise.
    """

    version: int
    shape: ModelShape
    item_ids: list[str]
    tensors: dict[str, np.ndarray]
    parent: int | None = None
    changes: RowChanges | None = None

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def all_finite(self, rows: np.ndarray | None = None) -> bool:
        """Whether every tensor is finite (non-finite weights are never published).

        ``rows``: check only those rows of the row tensors (every other tensor whole),
        for a caller that checked the rest in an earlier version (``changes``).
        """
        checked = (
            array if rows is None or name not in ROW_TENSORS else array[rows]
            for name, array in self.tensors.items()
        )
        return all(bool(np.isfinite(array).all()) for array in checked)


@dataclass(slots=True)
class WeightDelta:
    """What changed from version ``parent`` to ``version``.

    ``start_row`` is the parent's item count: ``new_item_ids`` take rows from there on,
    and every such row is among ``rows`` (so the delta alone defines them).
    """

    version: int
    parent: int
    start_row: int
    new_item_ids: list[str]
    rows: np.ndarray
    row_values: dict[str, np.ndarray]
    dense: dict[str, np.ndarray]


class DeltaMismatchError(ValueError):
    """The delta does not continue these weights (wrong parent or item count)."""


def check_continues(weights: ModelWeights, version: int, n_items: int, delta: WeightDelta) -> None:
    """Raise ``DeltaMismatchError`` unless ``delta`` continues version ``version`` (of
    ``n_items`` rows) of ``weights``' lineage: its parent, its first new row, rows in
    range and dense tensors of ``weights``' shapes."""
    if delta.parent != version or delta.start_row != n_items:
        raise DeltaMismatchError(
            f"delta v{delta.version} continues v{delta.parent}/{delta.start_row} rows, "
            f"not v{version}/{n_items} rows"
        )
    rows = delta.rows
    if len(rows) and (rows.min() < 0 or rows.max() >= n_items + len(delta.new_item_ids)):
        raise DeltaMismatchError(f"delta v{delta.version} writes rows out of range")
    for name, value in delta.dense.items():
        if name not in weights.tensors or weights.tensors[name].shape != value.shape:
            raise DeltaMismatchError(f"dense tensor {name} does not fit")


def apply_deltas(weights: ModelWeights, deltas: Sequence[WeightDelta]) -> ModelWeights:
    """The weights after ``deltas``, applied in order: a new object, ``weights`` is left
    unchanged.

    Each row tensor that a delta writes, or that new items grow, is copied once for all
    of them: a follower that skipped versions catches up with one copy of the table, not
    one per delta (1M items: ~0.15 s each). Tensors no delta writes are shared.
    """
    version, n_items = weights.version, weights.n_items
    for delta in deltas:
        check_continues(weights, version, n_items, delta)
        version, n_items = delta.version, n_items + len(delta.new_item_ids)
    if not deltas:
        return weights
    tensors = dict(weights.tensors)
    for name in ROW_TENSORS:
        old = weights.tensors.get(name)
        writes = [delta for delta in deltas if name in delta.row_values]
        # absent: weights built without the optional co-visitation rows
        if old is None or (n_items == len(old) and not writes):
            continue
        grown = np.empty((n_items, *old.shape[1:]), dtype=old.dtype)
        grown[: len(old)] = old
        grown[len(old) :] = -1 if name == COVIS_ITEMS else 0  # empty rows
        for delta in writes:  # a delta may leave the co-visitation rows out
            grown[delta.rows] = delta.row_values[name]
        tensors[name] = grown
    for delta in deltas:
        tensors.update(delta.dense)
    return ModelWeights(
        version=deltas[-1].version,
        shape=weights.shape,
        item_ids=weights.item_ids + [item for delta in deltas for item in delta.new_item_ids],
        tensors=tensors,
        parent=deltas[-1].parent,
    )
