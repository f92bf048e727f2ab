"""Huge events between normal ones: bounded dead letters, and the flow never stops.

A 750 KB event once stopped the flow for good: its dead letter (base64, a third larger) was
over the producer's 1,000,000-byte limit, the produce raised, and every restart read the
same event again. tansu stores messages of any size (a producer with a raised
``message.max.bytes`` put 2 MB and 120 MB ones there), so the flow must also read what its
consumer would by default refuse: beyond 100 MB (``receive.message.max.bytes``) librdkafka
retried the fetch forever and the partition stalled without an error.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import orjson
import pytest

from flows.batch_kafka_source import BatchKafkaSource
from flows.dead_letter import MAX_RECORD_BYTES, RAW_PREFIX_BYTES, decode_dead_letter
from streamrec.events import RejectReason
from streamrec.kafka_clients import ensure_topics, make_producer
from streamrec.settings import Settings
from streamrec.topics import Topics
from tests.faults.tailing_flow import start_flow, stop_flow, wait_while_running
from tests.integration.test_feature_flow import (
    decoded,
    derived_keys_removed,  # noqa: F401 - autouse fixture: removes the tagged keys
    flow_settings,
    produce_events,
    read_state,
)
from tests.kafka_reading import read_topic
from tests.private_services import PrivateBroker
from tests.unit.flows.test_shard import reference_features, sample_events

pytestmark = pytest.mark.faults

BIG_PRODUCER = {"message.max.bytes": 200_000_000}


def oversized_event(size: int, name: str) -> bytes:
    """A click padded to ``size`` bytes (random text: compression does not shrink it)."""
    head = orjson.dumps(
        {"event_id": name, "type": "click", "session_id": name, "ts": 1_400_000_000_000,
         "item_id": "i", "pad": ""}
    )[:-2]  # fmt: skip
    pad = os.urandom(size).hex().encode()[: size - len(head) - 2]
    return head + pad + b'"}'


def test_oversized_events_are_dead_lettered_bounded_and_the_flow_keeps_running(
    settings: Settings, tmp_path: Path
) -> None:
    events = sample_events(6000)
    expected = reference_features(events)
    big = flow_settings(settings, "big")
    topics = Topics.from_settings(big.kafka)
    log = tmp_path / "flow.log"
    flow = start_flow(big, log)
    try:
        produce_events(big, events[:3000])
        payloads = [oversized_event(750_000, "big-750k"), oversized_event(2_000_000, "big-2m")]
        producer = make_producer(big.kafka, **BIG_PRODUCER)
        for payload, key in zip(payloads, (b"big-750k", b"big-2m"), strict=True):
            producer.produce(topics.clicks, payload, key)
        assert producer.flush(30) == 0
        produce_events(big, events[3000:])

        wait_while_running(
            flow, log, lambda: decoded(read_state(big)) == expected, "the normal events' features"
        )
        records = read_topic(big.kafka, topics.events_dlq, len(payloads) + 1, timeout_s=3)
        assert flow.poll() is None, "the flow stopped"
    finally:
        stop_flow(flow)

    assert len(records) == len(payloads), "one dead letter per oversized event, no repeats"
    assert all(len(m.value()) + len(m.key() or b"") <= MAX_RECORD_BYTES for m in records)
    letters = sorted(
        (decode_dead_letter(m.value(), m.key()) for m in records), key=lambda x: x.size
    )
    for letter, payload in zip(letters, payloads, strict=True):
        assert letter.reason == RejectReason.OVERSIZED
        assert letter.size == len(payload) and letter.truncated
        assert letter.sha256 == hashlib.sha256(payload).hexdigest()
        assert letter.raw == payload[:RAW_PREFIX_BYTES]


def test_a_message_over_the_default_receive_limit_is_read_not_stalled_on(
    private_broker: PrivateBroker,
) -> None:
    # A broker only this test fills with a 101 MB message; one partition, the one read.
    kafka = private_broker.kafka.model_copy(update={"partitions": 1})
    ensure_topics(kafka, ["huge"])
    producer = make_producer(kafka, **BIG_PRODUCER)
    producer.produce("huge", os.urandom(101_000_000), b"k")
    producer.produce("huge", b"after", b"k")
    assert producer.flush(60) == 0
    del producer

    part = BatchKafkaSource(kafka.client_config(), ["huge"], stop_at_end=True).build_part(
        "kafka_in", "0-huge", None
    )
    sizes: list[int] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            try:
                batches = part.next_batch()
            except StopIteration:
                break
            sizes += [len(m.value()) for batch in batches for m in batch.messages]
    finally:
        part.close()
    assert sizes == [101_000_000, 5], "the partition stalled at the huge message"
