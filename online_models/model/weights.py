"""Model weights as plain data: what the registry stores and what serving scores with.

A ``ModelWeights`` is framework-free (numpy arrays keyed by parameter name plus the
ordered item ids), so the registry, serving and tests can handle it without torch.
Row ``i`` of every row tensor (``head.item_table``, ``head.item_bias`` and the
co-visitation table ``head.covis_items`` / ``head.covis_weight``) belongs to ``item_ids[i]``.
A ``WeightDelta`` holds what changed between two versions: the touched item rows, the
rows of items that appeared since the parent, and the dense tensors that changed.
"""

from __future__ import annotations

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


@dataclass(slots=True)
class ModelWeights:
    """One complete model version: every tensor plus the item ids the rows stand for."""

    version: int
    shape: ModelShape
    item_ids: list[str]
    tensors: dict[str, np.ndarray]
    parent: int | None = None

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def all_finite(self) -> bool:
        """Whether every tensor is finite (non-finite weights are never published)."""
        return all(bool(np.isfinite(array).all()) for array in self.tensors.values())


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


def apply_delta(weights: ModelWeights, delta: WeightDelta) -> ModelWeights:
    """The weights of ``delta.version``: a new object, ``weights`` is left unchanged."""
    if delta.parent != weights.version or delta.start_row != weights.n_items:
        raise DeltaMismatchError(
            f"delta v{delta.version} continues v{delta.parent}/{delta.start_row} rows, "
            f"not v{weights.version}/{weights.n_items} rows"
        )
    n_new = len(delta.new_item_ids)
    tensors = dict(weights.tensors)
    for name in ROW_TENSORS:
        old = weights.tensors.get(name)
        if old is None:  # weights built without the optional co-visitation rows
            continue
        grown = np.empty((old.shape[0] + n_new, *old.shape[1:]), dtype=old.dtype)
        grown[: old.shape[0]] = old
        grown[old.shape[0] :] = -1 if name == COVIS_ITEMS else 0  # empty rows
        if name in delta.row_values:  # a delta may leave the co-visitation rows out
            grown[delta.rows] = delta.row_values[name]
        tensors[name] = grown
    for name, value in delta.dense.items():
        if name not in tensors or tensors[name].shape != value.shape:
            raise DeltaMismatchError(f"dense tensor {name} does not fit")
        tensors[name] = value
    return ModelWeights(
        version=delta.version,
        shape=weights.shape,
        item_ids=weights.item_ids + delta.new_item_ids,
        tensors=tensors,
        parent=delta.parent,
    )
