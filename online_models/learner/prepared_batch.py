"""A micro-batch as arrays, built once on the host before the step needs it.

The step works on rows, not on item ids. ``prepare_batch`` does the per-example Python
(walking each history) once, in whatever thread reads the batch, and leaves arrays: the
batch's distinct item ids, each history and target as slots into them, the weights. The
step then maps ids to rows with one vectorised lookup of the distinct ids, which stays
right while the index grows between preparing and stepping (new ids are resolved then).
``prefetched`` overlaps preparing the next batch with stepping the current one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from online_models.model.item_index import right_aligned
from streamrec.training_examples import TrainingExample


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """One micro-batch's examples and their item ids as arrays (all B-long on axis 0)."""

    examples: Sequence[TrainingExample]
    item_ids: list[str]  # distinct, in first-seen order over each (*history, target)
    history_slots: np.ndarray  # B x W slots into item_ids, right-aligned, -1 = padding
    target_slots: np.ndarray  # B
    weights: np.ndarray  # B, float32

    def __len__(self) -> int:
        return len(self.examples)


def prepare_batch(examples: Sequence[TrainingExample]) -> PreparedBatch:
    """Arrays of a batch: no model state is read, so any thread may call it."""
    slot_of: dict[str, int] = {}
    slots = np.fromiter(
        (
            slot_of.setdefault(item, len(slot_of))
            for example in examples
            for item in (*example.history, example.target_item)
        ),
        np.int64,
    )
    lengths = np.fromiter((len(e.history) + 1 for e in examples), np.int64, len(examples))
    target_at = np.cumsum(lengths) - 1
    history = np.delete(slots, target_at)
    return PreparedBatch(
        examples=examples,
        item_ids=list(slot_of),
        history_slots=right_aligned(history, lengths - 1),
        target_slots=slots[target_at],
        weights=np.fromiter((e.weight for e in examples), np.float32, len(examples)),
    )


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
