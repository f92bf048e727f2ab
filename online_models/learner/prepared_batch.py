"""A micro-batch as arrays, built once on the host before the step needs it.

The step works on rows, not on item ids. ``prepare_batch`` does the per-example Python
(walking each history) once, in whatever thread reads the batch, and leaves arrays: the
batch's distinct item ids, each history and target as slots into them, the weights. The
step then maps ids to rows with one vectorised lookup of the distinct ids, which stays
right while the index grows between preparing and stepping (new ids are resolved then).
``prefetched`` overlaps preparing the next batch with stepping the current one.

Exposure examples (``kind="exposure"``) are not ranked: their histories follow the ranked
examples' rows (one encoder pass for both), and each shown item becomes a pair (row, item,
label): 1 for the item clicked from the list, 0 for each ignored one that is not in the
session's history (ranking puts those first whatever their score, so the list showing them
says nothing about the model; the next-click loss masks them too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np

from online_models.model.item_index import right_aligned
from streamrec.training_examples import EXPOSURE, TrainingExample


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """One micro-batch's examples and their item ids as arrays.

    B ranked (next-click) examples and E exposure examples: histories are B + E rows (the
    ranked ones first), targets and weights B, pairs P (``pair_rows`` index histories).
    """

    examples: Sequence[TrainingExample]
    item_ids: list[str]  # distinct, in first-seen order over each (*history, target)
    history_slots: np.ndarray  # (B + E) x W slots into item_ids, right-aligned, -1 = padding
    target_slots: np.ndarray  # B
    weights: np.ndarray  # B, float32
    # P pairs: rows of history_slots (>= B), slots into item_ids, 1 = clicked from the list
    pair_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pair_slots: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pair_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.examples)


def prepare_batch(examples: Sequence[TrainingExample], exposures: bool = True) -> PreparedBatch:
    """Arrays of a batch: no model state is read, so any thread may call it.

    ``exposures=False`` leaves exposure examples out (a learner that does not use them).
    """
    ranked = [e for e in examples if e.kind != EXPOSURE]
    shown = [e for e in examples if e.kind == EXPOSURE] if exposures else []
    slot_of: dict[str, int] = {}
    slots = np.fromiter(
        (
            slot_of.setdefault(item, len(slot_of))
            for example in ranked
            for item in (*example.history, example.target_item)
        ),
        np.int64,
    )
    lengths = np.fromiter((len(e.history) + 1 for e in ranked), np.int64, len(ranked))
    target_at = np.cumsum(lengths) - 1
    history = np.delete(slots, target_at)
    history_lengths = lengths - 1
    batch = PreparedBatch(
        examples=examples,
        item_ids=list(slot_of),
        history_slots=right_aligned(history, history_lengths),
        target_slots=slots[target_at],
        weights=np.fromiter((e.weight for e in ranked), np.float32, len(ranked)),
    )
    if not shown:
        return batch
    setdefault = slot_of.setdefault
    exposure_history = np.fromiter(
        (setdefault(item, len(slot_of)) for e in shown for item in e.history), np.int64
    )
    exposure_lengths = np.fromiter((len(e.history) for e in shown), np.int64, len(shown))
    pairs = [
        (row, setdefault(item, len(slot_of)), label)
        for row, e in enumerate(shown, start=len(ranked))
        for item, label in _labelled(e)
    ]
    rows, pair_slots, labels = zip(*pairs, strict=True) if pairs else ((), (), ())
    return replace(
        batch,
        item_ids=list(slot_of),
        history_slots=right_aligned(
            np.concatenate([history, exposure_history]),
            np.concatenate([history_lengths, exposure_lengths]),
        ),
        pair_rows=np.asarray(rows, np.int64),
        pair_slots=np.asarray(pair_slots, np.int64),
        pair_labels=np.asarray(labels, np.float32),
    )


def _labelled(exposure: TrainingExample) -> list[tuple[str, float]]:
    """An exposure's clicked item (label 1) and its ignored items outside the session (0)."""
    session = set(exposure.history)
    labelled = [(item, 0.0) for item in exposure.negatives if item not in session]
    return [(exposure.target_item, 1.0), *labelled] if exposure.target_item else labelled


def prefetched(
    batches: Iterable[Sequence[TrainingExample]],
    prepare: Callable[[Sequence[TrainingExample]], PreparedBatch] = prepare_batch,
) -> Iterator[PreparedBatch]:
    """Prepared batches in order; the next one is prepared in a worker while the caller steps.

    torch releases the GIL inside its kernels, so on a machine with a spare core the
    preparation costs the step nothing.
    """
    source = iter(batches)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare-batch") as worker:
        pending = _submit(worker, source, prepare)
        while pending is not None:
            batch = pending.result()
            pending = _submit(worker, source, prepare)
            yield batch


def _submit(
    worker: ThreadPoolExecutor,
    source: Iterator[Sequence[TrainingExample]],
    prepare: Callable[[Sequence[TrainingExample]], PreparedBatch],
) -> Future[PreparedBatch] | None:
    examples = next(source, None)
    return None if examples is None else worker.submit(prepare, examples)
