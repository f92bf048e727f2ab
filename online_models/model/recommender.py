"""The session recommender: a Hugging Face encoder over item embeddings plus a head.

The backbone is a ``BertModel`` built from a config (sizes from ``ModelSettings``), fed
``inputs_embeds`` taken from the item table, so the word vocabulary is unused. The
**head** is the item table (one row per item, tied between input and output), a per-item
bias, a projection of the encoder's last position, and a repeat bonus per history position
(shoppers often go back to an item they just saw; the bonus lets any item in the session,
even one whose row is still untrained, rank by how recently it was clicked):
``scores = proj(h) @ table.T + bias + bonus[position of the item in the history]``; for
ranking, the session's own items are also lifted above every other item, and the head's
co-visitation table adds ``blend * evidence`` (``covisitation.py``: what session-kNN
knows, items clicked next after the session's items in recent sessions).
The table keeps spare capacity and doubles when full, so new items never force a restart.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn
from transformers import BertConfig, BertModel

from online_models.model.covisitation import Evidence, session_evidence
from online_models.model.device import to_device
from online_models.model.last_position_encoder import last_position_state
from online_models.model.weights import (
    COVIS_ITEMS,
    COVIS_WEIGHT,
    ITEM_BIAS,
    ITEM_TABLE,
    ModelShape,
    ModelWeights,
)
from streamrec.settings import ModelSettings

PROJECTION_PREFIX = "head.projection."
REPEAT_BONUS = "head.repeat_bonus"
COVIS_BLEND = "head.covis_blend"
INITIAL_BLEND = 1.0  # until a warm-up fits it (``fit_blend``)
LENGTH_BUCKETS = (2, 5, 10)
SHORT_SESSION = 5  # on CPU, histories up to this long are encoded apart from longer ones
# ... in a batch of at least this many sessions: below, a second call costs more than the
# padding it saves (inference, one thread: 8 sessions 0.9 against 1.4 ms, 32 1.2 against
# 1.6 ms; 256 4.6 against 3.6 ms), so serving's batches are encoded in one call
GROUPED_FROM_SESSIONS = 128
BACKBONE_PREFIX = "backbone."
SESSION_ITEM_LIFT = 1000.0  # larger than any learned score gap


def bucket_lengths(full: int) -> tuple[int, ...]:
    """The sequence lengths ``encode`` runs the backbone at, for histories padded to ``full``."""
    return (*(b for b in LENGTH_BUCKETS if b < full), full)


@dataclass(frozen=True, slots=True)
class EncoderBatch:
    """Left-padded histories on the device, and how the encoder groups them into calls."""

    rows: torch.Tensor  # B x W item rows (or columns of a given table), W a bucket length
    mask: torch.Tensor  # B x W, 1 where an item is
    groups: tuple[tuple[torch.Tensor, int], ...] = ()  # (sessions, width) per call; () = one


def history_tensors(rows: np.ndarray, mask: np.ndarray, device: torch.device) -> EncoderBatch:
    """Histories for ``encode``, cut to the batch's bucket length, grouped for the device.

    The width is the shortest bucket holding the batch's longest history. On a GPU the
    batch is encoded in one call (a few fixed shapes, no per-group launches); on a CPU
    sessions of up to ``SHORT_SESSION`` items (most of them) are encoded apart from the
    longer ones, so their padding costs nothing: a learner batch's encoder forward and
    backward took half the time (4.4 vs 8.5 ms at B=256 here). A batch of fewer than
    ``GROUPED_FROM_SESSIONS`` (serving's) is encoded in one call on a CPU too.
    """
    full = rows.shape[1]
    lengths = mask.sum(axis=1)
    width = _bucket_width(int(lengths.max(initial=0)), full)
    cut = (slice(None), slice(full - width, None))
    batch = EncoderBatch(to_device(rows[cut], device), to_device(mask[cut], device))
    short = lengths <= SHORT_SESSION
    small = len(rows) < GROUPED_FROM_SESSIONS
    if device.type == "cuda" or small or width <= SHORT_SESSION or short.all() or not short.any():
        return batch
    short_width = _bucket_width(int(lengths[short].max()), full)
    groups = ((to_device(np.flatnonzero(short), device), short_width),
              (to_device(np.flatnonzero(~short), device), width))  # fmt: skip
    return EncoderBatch(batch.rows, batch.mask, groups)


def _bucket_width(longest: int, full: int) -> int:
    return next(length for length in bucket_lengths(full) if length >= longest)


# (item vectors, padding mask, positions) -> the last position's state, B x H.
BackboneCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def backbone_config(shape: ModelShape, dropout: float = 0.0) -> BertConfig:
    """The encoder's config: every size comes from ``shape``."""
    return BertConfig(
        vocab_size=1,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        intermediate_size=4 * shape.hidden_size,
        max_position_embeddings=shape.max_seq_len,
        type_vocab_size=1,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        # Sessions are short: plain attention beats the fused kernels at these sizes on CPU.
        attn_implementation="eager",
    )


class SessionRecommender(nn.Module):
    """Encoder + head; ``n_items`` rows of the ``capacity``-row table are in use."""

    def __init__(
        self,
        shape: ModelShape,
        capacity: int,
        dropout: float = 0.0,
        seed: int = 0,
        backbone: BertModel | None = None,
    ) -> None:
        super().__init__()
        # ``backbone``: an existing module to use (shared, read-only, by serving's scorers,
        # whose weights are loaded right after: nothing drawn here is kept, so the
        # process's generator is left alone; reseeding it cost 0.7 ms of every hot swap).
        if backbone is None:
            torch.manual_seed(seed)
            backbone = BertModel(backbone_config(shape, dropout), add_pooling_layer=False)
        self.shape = shape
        self.backbone = backbone
        self.item_table = nn.Parameter(torch.zeros(capacity, shape.hidden_size))
        self.item_bias = nn.Parameter(torch.zeros(capacity))
        self.projection = nn.Linear(shape.hidden_size, shape.hidden_size)
        self.repeat_bonus = nn.Parameter(torch.zeros(shape.max_seq_len))
        self.covis_blend = nn.Parameter(torch.full((1,), INITIAL_BLEND))
        neighbours = shape.covis_neighbours
        self.register_buffer(
            "covis_items", torch.full((capacity, neighbours), -1, dtype=torch.int32)
        )
        self.register_buffer("covis_weight", torch.zeros(capacity, neighbours))
        self.n_items = 0
        # What runs the backbone in ``encode``; serving swaps in a traced copy.
        self.backbone_call: BackboneCall = partial(last_position_state, self.backbone)
        self._init_scale = 1.0 / shape.hidden_size**0.5
        self._generator = torch.Generator().manual_seed(seed)

    @property
    def capacity(self) -> int:
        return self.item_table.shape[0]

    def add_rows(self, count: int, vectors: torch.Tensor | None = None) -> range:
        """Append ``count`` item rows (random or the given vectors); doubles capacity if full."""
        start = self.n_items
        needed = start + count
        if needed > self.capacity:
            new_capacity = self.capacity
            while new_capacity < needed:
                new_capacity *= 2
            self._resize(new_capacity)
        with torch.no_grad():
            if vectors is None:
                vectors = torch.randn(count, self.shape.hidden_size, generator=self._generator) * (
                    self._init_scale
                )
            self.item_table[start:needed] = vectors.to(self.item_table.device)
            self.item_bias[start:needed] = 0.0
            self.covis_items[start:needed] = -1
            self.covis_weight[start:needed] = 0.0
        self.n_items = needed
        return range(start, needed)

    def _resize(self, capacity: int) -> None:
        with torch.no_grad():
            table = torch.zeros(capacity, self.shape.hidden_size, device=self.item_table.device)
            table[: self.n_items] = self.item_table[: self.n_items]
            bias = torch.zeros(capacity, device=self.item_bias.device)
            bias[: self.n_items] = self.item_bias[: self.n_items]
            items = self.covis_items.new_full((capacity, self.covis_items.shape[1]), -1)
            items[: self.n_items] = self.covis_items[: self.n_items]
            weight = self.covis_weight.new_zeros((capacity, self.covis_weight.shape[1]))
            weight[: self.n_items] = self.covis_weight[: self.n_items]
        # Same Parameter objects: optimizers and references stay valid.
        self.item_table.data = table
        self.item_bias.data = bias
        self.covis_items = items
        self.covis_weight = weight

    def encode(self, batch: EncoderBatch, table: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's last-position state (B x H); zero for empty histories.

        One backbone call per group of ``batch`` (see ``history_tensors``), each at its
        group's width; position ids keep every item at the position it has in the padded
        ``max_seq_len`` layout, so the result does not depend on the cut or the grouping.
        Nothing here reads values back to the host. ``table`` replaces the item table as
        the source of input vectors (``batch.rows`` then index into it): the online
        learner passes the rows in its loss, so their input side gets gradients too.
        """
        table = self.item_table if table is None else table
        if not batch.groups:
            return self._encode_call(batch.rows, batch.mask, table)
        out = torch.zeros(batch.rows.shape[0], self.shape.hidden_size, device=batch.rows.device)
        for members, width in batch.groups:
            state = self._encode_call(
                batch.rows[members, -width:], batch.mask[members, -width:], table
            )
            out = out.index_copy(0, members, state)
        return out

    def _encode_call(
        self, rows: torch.Tensor, mask: torch.Tensor, table: torch.Tensor
    ) -> torch.Tensor:
        batch, width = rows.shape
        if table.shape[0] == 0:  # no known item in any history
            return torch.zeros(batch, self.shape.hidden_size, device=rows.device)
        full = self.shape.max_seq_len
        positions = torch.arange(full - width, full, device=rows.device).expand(batch, width)
        embeds = torch.nn.functional.embedding(rows, table)
        state = self.backbone_call(embeds, mask, positions).float()
        return torch.where(mask[:, -1:] > 0, state, torch.zeros_like(state))

    def session_vectors(self, batch: EncoderBatch) -> torch.Tensor:
        """Session query vectors (B x H)."""
        return self.projection(self.encode(batch))

    def scores(
        self, sessions: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor, *, lift: bool
    ) -> torch.Tensor:
        """Scores of every known item (B x n_items) for sessions with these histories.

        ``lift`` is for ranking, never for a loss (see ``add_repeat_bonus``); ranking
        scores also carry the co-visitation term (``add_covisitation``). Full training's
        loss leaves that term out: the warm-up's table holds the training targets.
        """
        n = self.n_items
        scores = torch.addmm(self.item_bias[:n], sessions, self.item_table[:n].T)
        scores = self.add_repeat_bonus(scores, rows, mask, lift=lift)
        return self.add_covisitation(scores, rows, mask) if lift else scores

    def covisitation_evidence(self, rows: torch.Tensor, mask: torch.Tensor) -> Evidence:
        """Each session's co-visitation evidence for the candidates its items' rows name."""
        return session_evidence(
            self.covis_items, self.covis_weight, rows, mask, rows.shape[1], self.n_items
        )

    def covisitation_term(self, evidence: Evidence) -> torch.Tensor:
        """What the evidence adds at its (line, column) pairs (repeated pairs add up)."""
        return self.covis_blend * evidence.values

    def covisitation_at(
        self,
        rows: torch.Tensor,
        mask: torch.Tensor,
        columns: torch.Tensor,
        evidence: Evidence | None = None,
    ) -> torch.Tensor:
        """The co-visitation term of the items ``columns`` (distinct rows, any order) for
        each session: B x len(columns), the same values ``add_covisitation`` adds there
        (from ``evidence`` when the caller has the sessions' already)."""
        out = torch.zeros(rows.shape[0], len(columns), device=rows.device)
        if len(columns) == 0:
            return out
        if evidence is None:
            evidence = self.covisitation_evidence(rows, mask)
        order = torch.argsort(columns)
        at = torch.searchsorted(columns[order], evidence.columns).clamp(max=len(columns) - 1)
        keep = columns[order][at] == evidence.columns
        term = self.covisitation_term(evidence)[keep]
        return out.index_put((evidence.lines[keep], order[at[keep]]), term, accumulate=True)

    def add_covisitation(
        self, scores: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Add the co-visitation term at each session's evidenced columns (in place).

        The one place the blended score is made: the learner's ranking pass, evaluation,
        validation and serving all come here. A scatter of the history rows' ``K``
        neighbours, never a catalogue-sized pass.
        """
        if scores.shape[1] == 0:
            return scores
        evidence = self.covisitation_evidence(rows, mask)
        term = self.covisitation_term(evidence).to(scores.dtype)
        return scores.index_put_((evidence.lines, evidence.columns), term, accumulate=True)

    def add_repeat_bonus(
        self, scores: torch.Tensor, columns: torch.Tensor, mask: torch.Tensor, *, lift: bool
    ) -> torch.Tensor:
        """Add each history position's bonus at that item's column of ``scores`` (in place).

        With ``lift`` (ranking) every history position also adds ``SESSION_ITEM_LIFT``: the
        session's own items rank first, in the model's order among themselves (an item
        clicked twice before one clicked once). The learned bonus is a likelihood term and
        stays modest, yet about 3 in 10 next clicks go back to an item of the session, far
        more than any other single item gets: on the warm-up's own dev stream, lifting them
        took prequential HR@20 from 0.44 to 0.48. A loss never sees the lift (it would
        swamp the softmax).
        """
        if scores.shape[1] == 0:
            return scores
        weight = mask.to(scores.dtype)
        bonus = self.position_bonus(columns.shape[1]).to(scores.dtype) * weight
        if lift:
            bonus = bonus + weight * SESSION_ITEM_LIFT
        return scores.scatter_add_(1, columns, bonus)  # in place: the matrix can be large

    def position_bonus(self, width: int) -> torch.Tensor:
        """The repeat bonus of the last ``width`` history positions."""
        return self.repeat_bonus[self.shape.max_seq_len - width :]

    def dense_tensors(self) -> dict[str, np.ndarray]:
        """Every parameter except the item rows, as numpy arrays keyed by weight name."""
        tensors: dict[str, np.ndarray] = {}
        for name, value in self.backbone.state_dict().items():
            tensors[BACKBONE_PREFIX + name] = value.detach().cpu().float().numpy().copy()
        tensors.update(self.head_dense_tensors())
        return tensors

    def head_dense_tensors(self) -> dict[str, np.ndarray]:
        """The head's dense parameters (what an online delta carries besides rows)."""
        tensors = {
            PROJECTION_PREFIX + name: value.detach().cpu().float().numpy().copy()
            for name, value in self.projection.state_dict().items()
        }
        tensors[REPEAT_BONUS] = self.repeat_bonus.detach().cpu().float().numpy().copy()
        tensors[COVIS_BLEND] = self.covis_blend.detach().cpu().float().numpy().copy()
        return tensors

    def row_tensors(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The item rows ``rows`` of every row tensor (table, bias, co-visitation)."""
        index = to_device(np.asarray(rows, dtype=np.int64), self.item_table.device)
        return {
            ITEM_TABLE: self.item_table.detach()[index].cpu().float().numpy(),
            ITEM_BIAS: self.item_bias.detach()[index].cpu().float().numpy(),
            COVIS_ITEMS: self.covis_items[index].cpu().numpy(),
            COVIS_WEIGHT: self.covis_weight[index].cpu().numpy(),
        }

    def to_weights(self, version: int, item_ids: list[str]) -> ModelWeights:
        """A full copy of the current parameters."""
        if len(item_ids) != self.n_items:
            raise ValueError(f"{len(item_ids)} ids for {self.n_items} rows")
        tensors = self.dense_tensors()
        tensors.update(self.row_tensors(np.arange(self.n_items)))
        return ModelWeights(version, self.shape, list(item_ids), tensors)

    @classmethod
    def from_weights(
        cls,
        weights: ModelWeights,
        min_capacity: int = 16,
        dropout: float = 0.0,
        backbone: BertModel | None = None,
        share_rows: bool = False,
    ) -> SessionRecommender:
        """A model holding ``weights`` (capacity rounded up to a power of two).

        ``backbone``, when given, already holds ``weights``' backbone tensors and is used
        as it is (the caller checked: ``traced_backbone.tensors_digest``). With
        ``share_rows`` the row tensors are ``weights``' own arrays, not copies (capacity
        ``n_items``): for a model that only scores (serving's), as weights are never
        changed once built. A 1M-item version then builds in milliseconds, not seconds.
        """
        if share_rows:
            model = cls(weights.shape, 0, dropout, backbone=backbone)
            model.load_weights(weights, backbone=backbone is None, rows=False)
            model._share_rows(weights)
            return model
        capacity = max(min_capacity, 1 << max(weights.n_items - 1, 1).bit_length())
        model = cls(weights.shape, capacity, dropout, backbone=backbone)
        model.load_weights(weights, backbone=backbone is None)
        return model

    def _share_rows(self, weights: ModelWeights) -> None:
        """Use ``weights``' row arrays as this model's rows (read-only: never written)."""
        n, tensors = weights.n_items, weights.tensors
        with warnings.catch_warnings():  # a blob's arrays may be read-only: nothing writes
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            self.item_table.data = torch.from_numpy(np.asarray(tensors[ITEM_TABLE], np.float32))
            self.item_bias.data = torch.from_numpy(np.asarray(tensors[ITEM_BIAS], np.float32))
            if COVIS_ITEMS in tensors:
                self.covis_items = torch.from_numpy(np.asarray(tensors[COVIS_ITEMS], np.int32))
                self.covis_weight = torch.from_numpy(np.asarray(tensors[COVIS_WEIGHT], np.float32))
            else:  # versions from before co-visitation: empty
                self.covis_items = self.covis_items.new_full((n, self.shape.covis_neighbours), -1)
                self.covis_weight = self.covis_weight.new_zeros((n, self.shape.covis_neighbours))
        self.n_items = n

    def load_weights(self, weights: ModelWeights, backbone: bool = True, rows: bool = True) -> None:
        """Replace every parameter with ``weights`` (growing the table if needed); the
        backbone's only when ``backbone``, the item rows only when ``rows``."""
        if backbone:
            self.backbone.load_state_dict(
                {
                    name[len(BACKBONE_PREFIX) :]: torch.from_numpy(np.array(value))
                    for name, value in weights.tensors.items()
                    if name.startswith(BACKBONE_PREFIX)
                }
            )
        projection = {
            name[len(PROJECTION_PREFIX) :]: torch.from_numpy(np.array(value))
            for name, value in weights.tensors.items()
            if name.startswith(PROJECTION_PREFIX)
        }
        self.projection.load_state_dict(projection)
        with torch.no_grad():  # versions from before a tensor existed keep its initial value
            for name, parameter in ((REPEAT_BONUS, self.repeat_bonus),
                                    (COVIS_BLEND, self.covis_blend)):  # fmt: skip
                if name in weights.tensors:
                    parameter.copy_(torch.from_numpy(np.array(weights.tensors[name])))
        if not rows:
            return
        self.n_items = 0
        if weights.n_items > self.capacity:
            capacity = self.capacity
            while capacity < weights.n_items:
                capacity *= 2
            self._resize(capacity)
        self.add_rows(weights.n_items, torch.from_numpy(np.array(weights.tensors[ITEM_TABLE])))
        with torch.no_grad():
            self.item_bias[: weights.n_items] = torch.from_numpy(
                np.array(weights.tensors[ITEM_BIAS])
            )
        if COVIS_ITEMS in weights.tensors:  # versions from before co-visitation: empty
            n = weights.n_items
            self.covis_items[:n] = torch.from_numpy(np.array(weights.tensors[COVIS_ITEMS]))
            self.covis_weight[:n] = torch.from_numpy(np.array(weights.tensors[COVIS_WEIGHT]))


def random_weights(n_items: int, settings: ModelSettings, seed: int = 0) -> ModelWeights:
    """A complete, untrained model over ``n_items`` synthetic items (``item-0``...).

    For benchmarks (serving with a large catalog) and tests; the backbone tensors come
    from a freshly initialised model, so they load like trained ones.
    """
    shape = ModelShape.from_settings(settings)
    model = SessionRecommender(shape, capacity=16, seed=seed)
    tensors = model.dense_tensors()
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(shape.hidden_size)
    tensors[ITEM_TABLE] = (rng.standard_normal((n_items, shape.hidden_size)) * scale).astype(
        np.float32
    )
    tensors[ITEM_BIAS] = np.zeros(n_items, dtype=np.float32)
    tensors[COVIS_ITEMS] = np.full((n_items, shape.covis_neighbours), -1, dtype=np.int32)
    tensors[COVIS_WEIGHT] = np.zeros((n_items, shape.covis_neighbours), dtype=np.float32)
    return ModelWeights(0, shape, [f"item-{i}" for i in range(n_items)], tensors)
