"""Training examples: ids from event ids, click vs purchase fields, bought only when known."""

from __future__ import annotations

from flows.example_builder import click_example, purchase_example
from streamrec.events import Event
from streamrec.training_examples import decode_example, encode_example

CLICK = Event(event_id="e7", type="click", session_id="s1", ts=1_400_000_000_000, item_id="i9",
              category="3")  # fmt: skip


def test_click_example_carries_history_target_and_source() -> None:
    example = click_example(CLICK, ("i1", "i2"), False, "clicks", 2, 41)
    assert decode_example(encode_example(example)) == example
    assert (example.example_id, example.target_item, example.history) == ("e7", "i9", ("i1", "i2"))
    assert (example.kind, example.weight, example.bought) == ("click", 1.0, None)
    assert (example.source_topic, example.source_partition, example.source_offset) == (
        "clicks", 2, 41,
    )  # fmt: skip


def test_bought_is_true_only_when_the_purchase_is_already_known() -> None:
    assert click_example(CLICK, ("i1",), True, "clicks", 0, 1).bought is True


def test_purchase_example_is_a_weighted_positive() -> None:
    purchase = CLICK._replace(event_id="p1", type="purchase", category=None)
    example = purchase_example(purchase, (), 5.0, "purchases", 1, 3)
    assert (example.kind, example.weight, example.bought, example.history) == (
        "purchase", 5.0, True, (),
    )  # fmt: skip
    assert example.example_id == "p1"
