"""What a stored version of a model of a given shape holds: its dense tensors' shapes.

The registry checks each blob's header against the spec of the model shape the blob
declares (``blobs.py``), before reading a tensor: a table of the wrong width, a missing or
extra tensor, a shape that does not fit the declared model, is refused as a load error and
never reaches the model (where it would be an exception deep in torch). Versions of
different shapes may share a registry (the model code takes its sizes from the weights).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from online_models.model.weights import (
    COVIS_ITEMS,
    COVIS_WEIGHT,
    ITEM_BIAS,
    ITEM_TABLE,
    ModelShape,
)

# Largest size of any dimension a declared model shape may have (a header asking for more
# is refused before anything is built).
MAX_DIMENSION = 1 << 16
# Row tensors a version written before co-visitation lacks (it loads with an empty table).
OPTIONAL_ROWS = frozenset({COVIS_ITEMS, COVIS_WEIGHT})


class ShapeError(ValueError):
    """A declared model shape no model can have."""


@dataclass(frozen=True, slots=True)
class WeightSpec:
    """The model shape, and name -> shape of every dense (non item-row) tensor.

    ``optional`` tensors may be absent (versions written before they existed load
    without them, see ``SessionRecommender.load_weights``). ``rows(n)`` gives the item-row
    tensors of an ``n``-item model with their dtypes.
    """

    shape: ModelShape
    dense: Mapping[str, tuple[int, ...]]
    optional: frozenset[str]

    def rows(self, n: int) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Name -> (safetensors dtype, shape) of the row tensors of ``n`` item rows."""
        neighbours = self.shape.covis_neighbours
        return {
            ITEM_TABLE: ("F32", (n, self.shape.hidden_size)),
            ITEM_BIAS: ("F32", (n,)),
            COVIS_ITEMS: ("I32", (n, neighbours)),
            COVIS_WEIGHT: ("F32", (n, neighbours)),
        }

    @classmethod
    def for_shape(cls, shape: ModelShape) -> WeightSpec:
        """The spec of ``shape``; ``ShapeError`` for a shape no model can have."""
        sizes = shape.as_dict().values()
        if not all(isinstance(size, int) and 0 < size <= MAX_DIMENSION for size in sizes):
            raise ShapeError(f"impossible model shape {shape}")
        try:
            return _spec_for(shape)
        except (ValueError, RuntimeError) as exc:  # e.g. heads that do not divide the size
            raise ShapeError(f"impossible model shape {shape}: {exc}") from exc


@functools.lru_cache(maxsize=8)
def _spec_for(shape: ModelShape) -> WeightSpec:
    """Read off a model built on torch's meta device: the model's own names and shapes,
    and nothing allocated however large the declared shape.

    The names follow ``SessionRecommender.dense_tensors`` (a unit test holds them equal).
    torch is imported here, not at module level: ``streamrec model status`` reads the
    registry's metadata and must not pay for torch. The global RNG is left as it was.
    """
    import torch

    from online_models.model.recommender import (
        BACKBONE_PREFIX,
        COVIS_BLEND,
        PROJECTION_PREFIX,
        REPEAT_BONUS,
        SessionRecommender,
    )

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = SessionRecommender(shape, capacity=1)
    dense = {BACKBONE_PREFIX + n: tuple(v.shape) for n, v in model.backbone.state_dict().items()}
    dense |= {
        PROJECTION_PREFIX + n: tuple(v.shape) for n, v in model.projection.state_dict().items()
    }
    dense[REPEAT_BONUS] = tuple(model.repeat_bonus.shape)
    dense[COVIS_BLEND] = tuple(model.covis_blend.shape)
    return WeightSpec(shape, dense, frozenset({REPEAT_BONUS, COVIS_BLEND}))
