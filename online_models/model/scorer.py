"""Scoring a session against the whole catalog, for serving: inference only, no state.

Built once per model version (``SessionScorer.from_weights``); the item matrix is kept as
one contiguous tensor, column by column (the layout the product reads), and each call
does one encoder pass plus one matrix product, on the device it was built for
(``STREAMREC_SERVING_DEVICE``, CPU by default). On CPU the encoder runs as a traced
TorchScript graph (``traced_backbone``: about half the time per call, shared by every
version with the same backbone). For a large catalog on CPU, serving's top-K reads a
4-bit copy of the table instead and ranks the rows it shortlists exactly, from the
model's float32 rows (``Int4Table``, ``top_k_batch``). A version that follows the one
serving by deltas is built from that scorer: its rows are the weights' own arrays, its
index and int4 table the earlier ones with only the changed rows redone
(``from_weights(previous=...)``). The scorer is read-only after construction, so one
instance can be shared by threads and swapped atomically when a new version arrives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from online_models.model.device import selects_freely, to_device
from online_models.model.item_index import ItemIndex
from online_models.model.recommender import (
    BACKBONE_PREFIX,
    SessionRecommender,
    bucket_lengths,
    history_tensors,
)
from online_models.model.traced_backbone import cached_backbone, tensors_digest, traced_backbone
from online_models.model.weights import ModelWeights
from streamrec.settings import ModelSettings

BF16_MIN_ITEMS = 262_144
SHORTLIST_MIN_ITEMS = 262_144  # from here top-K shortlists from an ``Int4Table`` (on CPU)
BLOCK_ROWS = 32  # columns per block of ``block_top_k``
# Rows shortlisted per answer beyond its k: on a random 1M-item table the recall of the exact
# top 20 was 0.90 / 0.988 / 0.9998 / 1.0 with 0 / 8 / 32 / 64 (256 sessions); each row
# costs a few dot products in the exact re-rank.
SHORTLIST_MARGIN = 64
INT4_GROUP = 32  # entries per scale and offset; rows are padded to a multiple of this
QUANTISE_ROWS = 16_384  # rows quantised at a time: 4 MB temporaries, not catalog-sized ones
# Rows the int4 kernel packs as one block (64 with AVX-512, 32 otherwise; a multiple of
# both): changing a row means packing its block again.
PACK_ROWS = 64


@dataclass(frozen=True, slots=True)
class ScoreParts:
    """The parts of some items' ranking scores for one session (float32, one per item).

    ``match + bias + repeat + covisitation`` is each item's ranking score, up to float
    rounding (the parts are read from the same tensors, in the same dtype, as
    ``top_k_batch`` reads them; a bfloat16 table ranks by the sum rounded to bfloat16,
    about 3 significant digits).
    ``drops[j]`` is, per item, its score minus its score with the history's ``j``-th click
    left out (leave-one-out: how much that click lifted the item).
    """

    match: np.ndarray  # session vector . item vector
    bias: np.ndarray  # the item's learned bias
    repeat: np.ndarray  # repeat bonus + session-item lift (0 for an item not in the session)
    covisitation: np.ndarray  # blend * co-visitation evidence (0 without evidence)
    drops: np.ndarray  # len(history) x items


@dataclass(frozen=True, slots=True)
class Int4Table:
    """The item table quantised to 4 bits per entry (each group of ``INT4_GROUP`` entries of
    a row with its own bfloat16 scale and offset) for an approximate pass that reads a
    quarter of the bytes of a bfloat16 table.

    ``scores`` is ``torch._weight_int4pack_mm_for_cpu`` (bfloat16 queries against the packed
    rows, each group restored as ``(q - 8) * scale + offset`` inside the kernel) plus the
    bias: the query is not quantised, so the error is the rows' rounding (at most half a
    level: a thirtieth of a group's range) and bfloat16's. On an AVX-512 host (the only
    one it was measured on), 1M x 64 rows, one thread: one query in 5.4 ms against 9.8 ms
    for the int8 kernel (``_weight_int8pack_mm``) this replaced; two in 8-12 ms against
    12-13 ms, as unpacking the levels is done again per query (docs/serving.md).
    """

    packed: torch.Tensor  # padded rows x width / 2 uint8, the kernel's layout
    scales_and_offsets: torch.Tensor  # width / INT4_GROUP x padded rows x 2, bfloat16
    bias: torch.Tensor  # per row, float32 (-inf on padding rows)

    @classmethod
    def quantise(cls, table: torch.Tensor, bias: torch.Tensor) -> Int4Table:
        """Rows of ``table`` (float32, n x H) in 16 levels from each group's least to its
        largest entry; ``bias`` gives the padded row count (rows past n are zero). Packed
        ``QUANTISE_ROWS`` rows at a time, so no catalog-sized temporary is made."""
        padded, width = len(bias), _int4_width(table.shape[1])
        packed = torch.empty(padded, width // 2, dtype=torch.uint8, device=table.device)
        parts = torch.empty(
            width // INT4_GROUP, padded, 2, dtype=torch.bfloat16, device=table.device
        )
        for start in range(0, padded, QUANTISE_ROWS):
            stop = min(start + QUANTISE_ROWS, padded)
            part = table[start : min(stop, len(table))]  # padding rows: zeros
            part = torch.nn.functional.pad(part, (0, 0, 0, stop - start - len(part)))
            packed[start:stop], parts[:, start:stop] = _quantised(part)
        return cls(packed, parts, bias.float())

    def updated(self, table: torch.Tensor, bias: torch.Tensor, rows: np.ndarray) -> Int4Table:
        """The table ``quantise(table, bias)`` gives, from this one (of an earlier version
        of the lineage) when only ``rows`` changed since (new items' rows among them):
        new tensors, with only the ``PACK_ROWS``-row blocks holding a changed row, or
        rows past this table's, quantised and packed again (the kernel packs each block
        on its own). 3,000 changed rows of a 1M-row table touch about a sixth of its
        blocks: 0.1 s here, against 0.55 s for all of them."""
        old, padded = len(self.packed), len(bias)
        if padded < old or self.packed.shape[1] != _int4_width(table.shape[1]) // 2:
            return Int4Table.quantise(table, bias)  # not a later version: start afresh
        packed = self.packed.new_empty((padded, self.packed.shape[1]))
        packed[:old] = self.packed
        parts = self.scales_and_offsets.new_empty((self.scales_and_offsets.shape[0], padded, 2))
        parts[:, :old] = self.scales_and_offsets
        blocks = np.union1d(
            np.asarray(rows, dtype=np.int64) // PACK_ROWS,
            np.arange(old // PACK_ROWS, -(-padded // PACK_ROWS)),
        )
        step = QUANTISE_ROWS // PACK_ROWS
        for first in range(0, len(blocks), step):
            # whole blocks in ascending order: a last, partial block of the table stays
            # last, as in a pack of every row, so it gets the same (shorter) layout
            at = (blocks[first : first + step, None] * PACK_ROWS + np.arange(PACK_ROWS)).ravel()
            at = torch.from_numpy(at[at < padded]).to(table.device)
            part = torch.zeros(len(at), table.shape[1], dtype=table.dtype, device=table.device)
            real = at < len(table)  # the others are padding rows: zeros
            part[real] = table[at[real]]
            packed[at], parts[:, at] = _quantised(part)
        return Int4Table(packed, parts, bias.float())

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """Approximate ``queries . row + bias`` (float32, B x padded rows) for B x H queries.

        The kernel's bfloat16 result is widened at once: on AVX2 the block maxima of
        ``block_top_k`` take 5 times longer over bfloat16 than the widening and float32 ones.
        """
        width = self.scales_and_offsets.shape[0] * INT4_GROUP
        padded = torch.nn.functional.pad(queries, (0, width - queries.shape[1]))
        product = torch._weight_int4pack_mm_for_cpu(
            padded.bfloat16(), self.packed, INT4_GROUP, self.scales_and_offsets
        )
        return product.float().add_(self.bias)


class SessionScorer:
    """Scores over ``item_ids`` (index-aligned) for a session history of item ids."""

    def __init__(
        self,
        model: SessionRecommender,
        index: ItemIndex,
        version: int,
        table_dtype: str = "auto",
        device: torch.device | None = None,
        shortlists: Literal["on", "off", "auto"] = "auto",
        follows: tuple[SessionScorer, np.ndarray] | None = None,
    ) -> None:
        """``follows``: the scorer of an earlier version of this lineage and the rows
        changed since (``ModelWeights.changes``), whose int4 table is updated rather than
        quantised afresh."""
        self.version = version
        self.index = index
        self.device = device or model.item_table.device
        self._model = model.to(self.device).eval().requires_grad_(False)
        if self.device.type == "cpu":
            lengths = bucket_lengths(model.shape.max_seq_len)
            model.backbone_call = traced_backbone(model.backbone, lengths)
        n = model.n_items
        self._n = n
        self._max_len = model.shape.max_seq_len
        # Rows padded to whole blocks for ``block_top_k``; a padding row scores -inf.
        padded = -(-n // BLOCK_ROWS) * BLOCK_ROWS
        self._bias = torch.full((padded,), float("-inf"), device=self.device)
        self._bias[:n] = model.item_bias.detach()[:n]
        table = model.item_table.detach()[:n]
        # A GPU scores the whole table exactly in less time than the int4 pass takes on CPU
        # (whose kernel is CPU-only).
        use_shortlists = self.device.type == "cpu" and (
            shortlists == "on" or (shortlists == "auto" and n >= SHORTLIST_MIN_ITEMS)
        )
        self._int4: Int4Table | None = None
        # The item vectors as the products read them: the model's own float32 rows, or
        # a padded copy stored column by column (H x rows, ``_vectors``).
        self._rows: torch.Tensor | None = None
        self._columns: torch.Tensor | None = None
        if use_shortlists:
            # the exact re-rank reads a few rows per session: the model's own float32 rows
            self._rows = table
            if follows is not None and follows[0]._int4 is not None:
                self._int4 = follows[0]._int4.updated(table, self._bias, follows[1])
            else:
                self._int4 = Int4Table.quantise(table, self._bias)
            return
        # Scoring a large catalog is memory-bound: bfloat16 halves the bytes read per call.
        use_bf16 = table_dtype == "bfloat16" or (table_dtype == "auto" and n >= BF16_MIN_ITEMS)
        dtype = torch.bfloat16 if use_bf16 else torch.float32
        # Column by column, the product's right-hand side as BLAS reads it: stored row by
        # row, MKL copied the whole table into that layout on every call (16.5k items, 8
        # sessions: 0.39 against 0.58 ms a product, one thread).
        earlier = None
        if follows is not None and follows[0]._columns is not None:
            earlier = (follows[0]._columns, follows[0]._n, follows[1])
        self._columns = _item_columns(table, padded, dtype, earlier)
        self._bias = self._bias.to(dtype)

    @classmethod
    def from_weights(
        cls,
        weights: ModelWeights,
        settings: ModelSettings,
        device: torch.device | None = None,
        previous: SessionScorer | None = None,
    ) -> SessionScorer:
        """A scorer of ``weights`` on ``device`` (CPU when none is given).

        The model reads ``weights``' row arrays in place (``share_rows``). ``previous``,
        the scorer serving an earlier version, lends what does not change: its item
        index when the ids only grew, and, when ``weights.changes`` counts from its
        version, its int4 table with only the changed rows' blocks packed again. At 1M
        items that is what keeps a hot swap well under a second.
        """
        if settings.scorer_threads:
            torch.set_num_threads(settings.scorer_threads)
        shared = None
        if device is None or device.type == "cpu":  # versions that share a backbone share one
            lengths = bucket_lengths(weights.shape.max_seq_len)
            shared = cached_backbone(tensors_digest(weights.tensors, BACKBONE_PREFIX), lengths)
        model = SessionRecommender.from_weights(weights, backbone=shared, share_rows=True)
        index = (
            ItemIndex(weights.item_ids)
            if previous is None
            else ItemIndex.following(previous.index, weights.item_ids)
        )
        changes = weights.changes
        follows = None
        if previous is not None and changes is not None and changes.base == previous.version:
            follows = (previous, changes.rows)
        return cls(
            model, index, weights.version, settings.scorer_dtype, device,
            settings.scorer_shortlists, follows,
        )  # fmt: skip

    @property
    def item_ids(self) -> list[str]:
        return self.index.ids

    @property
    def shortlists(self) -> bool:
        """Whether ``top_k_batch`` ranks int4 shortlists (approximate) instead of every row."""
        return self._int4 is not None

    @property
    def item_rows(self) -> Mapping[str, int]:
        return self.index.rows

    def _queries(
        self, histories: Sequence[Sequence[str]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query vectors (B x H) plus the history rows and mask; unknown items are ignored."""
        rows, mask = self.index.encode_histories(histories, self._max_len)
        batch = history_tensors(rows, mask, self.device)
        with torch.inference_mode():
            return self._model.session_vectors(batch), batch.rows, batch.mask

    def score(self, history: Sequence[str]) -> np.ndarray:
        """float32 scores of every item (higher is better), aligned with ``item_ids``."""
        return self._scores(history).cpu().numpy()

    def score_batch(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """Scores for several sessions at once (len(histories) x n_items)."""
        with torch.inference_mode():
            return self._score_matrix(histories)[:, : self._n].cpu().numpy()

    def top_k_batch(
        self,
        histories: Sequence[Sequence[str]],
        k: int,
        excluded: Sequence[np.ndarray | None] = (),
        candidates: Sequence[np.ndarray | None] = (),
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per history, the ``k`` best rows and their float32 scores, best first.

        The scores are those of ``score_batch`` (ties in no particular order), from one
        matrix product for the whole batch, and no catalog-sized row is sorted or
        partitioned (``block_top_k``). ``excluded[i]`` (rows) never appear in answer ``i``;
        ``candidates[i]``, when given, holds the only rows it may contain (a category
        filter). Non-finite scores are never returned. With an int4 table (a large catalog
        on CPU) the rows come from its shortlists instead (``_reranked_top_k``): the
        ranking is approximate (recall of the exact top 20 about 1.0), the scores exact.
        """
        with torch.inference_mode():
            if self._int4 is not None:
                return self._reranked_top_k(self._int4, histories, k, excluded, candidates)
            scores = self._score_matrix(histories)
            self._exclude(scores, excluded)
            values, best = block_top_k(scores, k)
            answers = _finite(best.cpu().numpy(), values.cpu().numpy())
            for line, rows in enumerate(candidates):
                if rows is not None:
                    pool = _nan_last(scores[line, to_device(rows, self.device)])
                    top = torch.topk(pool, min(k, len(rows)))
                    picked = rows[top.indices.cpu().numpy()]
                    answers[line] = _finite(picked[None], top.values.cpu().numpy()[None])[0]
        return answers

    def top_k(
        self, history: Sequence[str], k: int, exclude: Sequence[str] = ()
    ) -> tuple[list[str], np.ndarray]:
        """The ``k`` best item ids and their scores, best first, skipping ``exclude``."""
        with torch.inference_mode():
            scores = self._scores(history)
            rows = [r for r in (self.index.row(i) for i in exclude) if r >= 0]
            if rows:
                scores[to_device(np.array(rows, dtype=np.int64), self.device)] = float("-inf")
            best = torch.topk(scores, min(k, scores.shape[0]))
            indices, values = best.indices.cpu(), best.values.cpu()
        ids = self.index.ids
        return [ids[r] for r in indices.tolist()], values.numpy()

    def explain(self, history: Sequence[str], rows: np.ndarray) -> ScoreParts:
        """The parts of the ranking scores of ``rows`` for ``history``, and each click's
        leave-one-out drop.

        One encoder pass over ``len(history) + 1`` histories and products with ``rows``
        only (never the whole catalog), so the cost is bounded by the history length and
        the number of rows. The repeat part is the model's own ``add_repeat_bonus`` on a
        matrix with one column per row (and one for every other item).
        """
        clicks = list(history)
        histories = [clicks, *(clicks[:j] + clicks[j + 1 :] for j in range(len(clicks)))]
        with torch.inference_mode():
            queries, history_rows, mask = self._queries(histories)
            picked = to_device(np.asarray(rows, dtype=np.int64), self.device)
            vectors = self._vectors(picked)
            match = (queries.to(vectors.dtype) @ vectors).float()
            bias = self._bias[picked].float().expand_as(match)
            repeat = self._repeat_at(history_rows, mask, picked)
            covisitation = self._model.covisitation_at(history_rows, mask, picked)
            scores = match + bias + repeat + covisitation
            return ScoreParts(
                match=match[0].cpu().numpy(),
                bias=bias[0].cpu().numpy(),
                repeat=repeat[0].cpu().numpy(),
                covisitation=covisitation[0].cpu().numpy(),
                drops=(scores[0] - scores[1:]).cpu().numpy(),
            )

    def _scores(self, history: Sequence[str]) -> torch.Tensor:
        """float32 scores of every item for one session."""
        with torch.inference_mode():
            return self._score_matrix([history])[0, : self._n]

    def _score_matrix(self, histories: Sequence[Sequence[str]]) -> torch.Tensor:
        """float32 scores (B x padded rows; padding rows score -inf), one matrix product."""
        queries, rows, mask = self._queries(histories)
        vectors = self._vectors()
        bias = self._bias[: vectors.shape[1]]  # unpadded when the rows are the model's own
        scores = torch.addmm(bias, queries.to(vectors.dtype), vectors)
        scores = self._model.add_repeat_bonus(scores.float(), rows, mask, lift=True)
        return self._model.add_covisitation(scores, rows, mask)

    def _reranked_top_k(
        self,
        quantised: Int4Table,
        histories: Sequence[Sequence[str]],
        k: int,
        excluded: Sequence[np.ndarray | None],
        candidates: Sequence[np.ndarray | None],
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``top_k_batch`` from the int4 table: shortlist, then rank the shortlist exactly.

        A session without a category filter shortlists its ``k + SHORTLIST_MARGIN`` best
        rows by the int4 scores plus the repeat bonus, lift and co-visitation term (added
        as in ``_score_matrix``, so every row they lift is shortlisted), its excluded rows
        set to -inf first. The batch's shortlists and category rows are then scored
        exactly (``_scores_at``), and each answer ranks the rows it may hold.
        """
        queries, rows, mask = self._queries(histories)
        lines = range(len(histories))
        pools = [candidates[line] if line < len(candidates) else None for line in lines]
        skips = [excluded[line] if line < len(excluded) else None for line in lines]
        free = [line for line in lines if pools[line] is None]
        shortlists = [pool for pool in pools if pool is not None]
        if free:
            at = to_device(np.array(free), self.device)
            rough = quantised.scores(queries[at])
            rough = self._model.add_repeat_bonus(rough, rows[at], mask[at], lift=True)
            rough = self._model.add_covisitation(rough, rows[at], mask[at])
            self._exclude(rough, [skips[line] for line in free])
            shortlists.append(block_top_k(rough, k + SHORTLIST_MARGIN)[1].cpu().numpy().ravel())
        picked = np.unique(np.concatenate(shortlists)) if shortlists else np.zeros(0, np.int64)
        if len(picked) == 0:  # no history, or only empty categories
            return [(picked, np.zeros(0, np.float32)) for _ in lines]
        scores = self._scores_at(queries, rows, mask, to_device(picked, self.device))
        allowed = np.ones(scores.shape, dtype=bool)
        for line in lines:
            if pools[line] is not None:
                allowed[line] = np.isin(picked, pools[line])
            if skips[line] is not None:
                allowed[line] &= ~np.isin(picked, skips[line])
        scores.masked_fill_(~to_device(allowed, self.device), float("-inf"))
        top = torch.topk(_nan_last(scores), min(k, len(picked)))
        return _finite(picked[top.indices.cpu().numpy()], top.values.cpu().numpy())

    def _scores_at(
        self, queries: torch.Tensor, history_rows: torch.Tensor, mask: torch.Tensor,
        picked: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """The ranking scores of the distinct rows ``picked`` (float32, B x len(picked)):
        those of ``_score_matrix`` up to float rounding, from products with those rows only."""
        vectors = self._vectors(picked)
        match = torch.addmm(self._bias[picked], queries.to(vectors.dtype), vectors).float()
        repeat = self._repeat_at(history_rows, mask, picked)
        return match + repeat + self._model.covisitation_at(history_rows, mask, picked)

    def _vectors(self, picked: torch.Tensor | None = None) -> torch.Tensor:
        """The item vectors the products read, H x items: every row's (padded when they
        are a copy), or the rows ``picked``."""
        if self._columns is not None:
            return self._columns if picked is None else self._columns[:, picked]
        assert self._rows is not None
        return (self._rows if picked is None else self._rows[picked]).T

    def _repeat_at(
        self, history_rows: torch.Tensor, mask: torch.Tensor, picked: torch.Tensor
    ) -> torch.Tensor:
        """The repeat part (bonus and lift) of the rows ``picked``, B x len(picked): the
        model's own ``add_repeat_bonus`` on a matrix with one column per picked row (and
        one for every other item)."""
        same = history_rows[:, :, None] == picked
        columns = torch.where(same.any(dim=2), same.int().argmax(dim=2), len(picked))
        lifted = torch.zeros(len(history_rows), len(picked) + 1, device=self.device)
        return self._model.add_repeat_bonus(lifted, columns, mask, lift=True)[:, : len(picked)]

    def _exclude(self, scores: torch.Tensor, excluded: Sequence[np.ndarray | None]) -> None:
        """Set each line's ``excluded`` columns of ``scores`` to -inf (in place)."""
        skipped = [(line, rows) for line, rows in enumerate(excluded) if rows is not None]
        if skipped:
            lines = np.concatenate([np.full(len(rows), line) for line, rows in skipped])
            columns = np.concatenate([rows for _, rows in skipped])
            index = (to_device(lines, self.device), to_device(columns, self.device))
            worst = torch.full((), float("-inf"), dtype=scores.dtype, device=self.device)
            scores.index_put_(index, worst)


def block_top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest entries of each row of ``scores`` and their columns, best first.

    ``scores`` is B x N with N a multiple of ``BLOCK_ROWS``; NaN ranks last. Exact, and
    no row is sorted: the k best entries of a row lie in the k blocks of ``BLOCK_ROWS``
    columns with the highest maxima (each of them is the maximum of its own block or
    below one), so only the N / ``BLOCK_ROWS`` block maxima and then k x ``BLOCK_ROWS``
    entries are ranked, instead of N.
    """
    batch, n = scores.shape
    asks = selects_freely(scores.device)  # on a GPU, asking whether there is a NaN waits
    if not asks:
        scores = _nan_last(scores)
    maxima = scores.view(batch, n // BLOCK_ROWS, BLOCK_ROWS).amax(dim=2)
    if asks and maxima.isnan().any():  # amax keeps NaN, and topk ranks it first: make it the worst
        return block_top_k(_nan_last(scores), k)
    blocks = torch.topk(maxima, min(k, maxima.shape[1])).indices
    offsets = torch.arange(BLOCK_ROWS, device=scores.device)
    columns = (blocks[:, :, None] * BLOCK_ROWS + offsets).flatten(1)
    best = torch.topk(scores.gather(1, columns), min(k, columns.shape[1]))
    return best.values, columns.gather(1, best.indices)


def _nan_last(scores: torch.Tensor) -> torch.Tensor:
    """A copy with NaN as the worst score (-inf); infinities stay as they are."""
    return scores.nan_to_num(float("-inf"), float("inf"), float("-inf"))


def _finite(columns: np.ndarray, values: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per line, the columns (int64) and values whose value is finite, in the given order."""
    kept = np.isfinite(values)
    return [
        (line[keep].astype(np.int64, copy=False), scores[keep])
        for line, scores, keep in zip(columns, values, kept, strict=True)
    ]


def _item_columns(
    table: torch.Tensor,
    padded: int,
    dtype: torch.dtype,
    earlier: tuple[torch.Tensor, int, np.ndarray] | None = None,
) -> torch.Tensor:
    """``table`` (items x H) stored column by column, H x ``padded`` (zeros past the
    items), in ``dtype``.

    ``earlier``: the columns of an earlier version of the lineage, its item count and the
    rows changed since. Then only those rows and the new items' are written into a copy
    (a version's delta moves a few hundred rows): at 16.5k items 0.5 ms against 1.4 ms
    for every row. Built whole, the table is transposed into a tensor of its own first:
    straight into the padded slice, torch's strided copy took 6.9 ms there.
    """
    hidden, n = table.shape[1], len(table)
    if earlier is not None:
        columns, known, rows = earlier
        width = columns.shape[1]
        if columns.dtype == dtype and columns.shape[0] == hidden and known <= n and width <= padded:
            copy = columns.clone() if width == padded else columns.new_zeros(hidden, padded)
            if width < padded:
                copy[:, :width] = columns
            changed = np.union1d(np.asarray(rows, dtype=np.int64), np.arange(known, n))
            at = torch.from_numpy(changed).to(table.device)
            copy[:, at] = table[at].T.to(dtype)
            return copy
    columns = torch.empty(hidden, padded, dtype=dtype, device=table.device)
    columns[:, n:] = 0
    columns[:, :n] = table.T.contiguous()
    return columns


def _int4_width(hidden: int) -> int:
    """The row width the int4 table packs: ``hidden`` padded to whole groups."""
    return -(-hidden // INT4_GROUP) * INT4_GROUP


def _quantised(part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``part`` (float32, whole ``PACK_ROWS`` blocks of the padded table, or its
    last rows) as the kernel's packed levels and their (groups x rows x 2) bfloat16
    scales and offsets."""
    width = _int4_width(part.shape[1])
    grouped = torch.nn.functional.pad(part, (0, width - part.shape[1]))
    grouped = grouped.view(len(part), -1, INT4_GROUP)
    low, high = grouped.amin(dim=2), grouped.amax(dim=2)
    # the kernel restores (q - 8) * scale + offset: levels from the rounded pair
    scale = ((high - low) / 15).clamp(min=1e-30).bfloat16().float()
    offset = (low + 8 * scale).bfloat16().float()
    level = (grouped - offset[..., None]).div_(scale[..., None]).round_().add_(8)
    level = level.clamp_(0, 15).view(len(part), width).int()
    packed = torch._convert_weight_to_int4pack_for_cpu(level, 1)
    return packed, torch.stack([scale, offset], dim=2).transpose(0, 1).bfloat16()
