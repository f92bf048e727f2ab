"""``streamrec drift``: the drift monitor process (I/O around ``DriftMonitor``).

Reads the learner's signal stream (Redis, from the cursor kept in the drift status hash),
the training examples, impressions and clicks (Kafka, consumer group
``DriftSettings.consumer_group``), sends alerts through every sink and starts a fine-tune
in its own process when a triggering alert arrives and the fine-tune lock is free. The lock
(``RedisKeys.finetune_lock``) is held for the run's timeout and then for the cooldown, so
alerts during a fine-tune or right after it never start another (no fine-tune storms).
While a canary version is rolled out it also runs the canary watch (``canary_loop``), which
promotes the canary or rolls it back.

It never blocks the learner: it only reads what the learner writes. Detector state is kept
in memory; after a restart the detectors warm up again (the signal cursor and consumer
offsets carry on, so no alert is raised twice for the same data).

Repeated training examples (the flow delivers them at least once) are observed once:
``streamrec.example_dedupe`` drops a record whose ``example_id`` came before; its window is
rebuilt from the topic before the group's committed offsets when the monitor starts.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import threading
import time
from multiprocessing.process import BaseProcess

from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from online_models.alerts.metrics import AlertMetrics
from online_models.alerts.sinks import AlertFanout, PrometheusAlertSink, build_fanout
from online_models.drift.canary_loop import CanaryLoop
from online_models.drift.finetune_schedule import DueFinetune, FinetuneSchedule, skipped_alert
from online_models.drift.metrics import DriftMetrics
from online_models.drift.monitor import REGRESSED, DriftMonitor, wants_finetune
from online_models.finetune.job import FinetuneRequest, run_finetune_process
from online_models.finetune.rollback import rollback_model
from online_models.finetune.status import (
    acquire_finetune_lock,
    read_status,
    record_drift,
    save_signal_cursor,
    start_cooldown,
)
from online_models.learner.signal import LearnerSignal
from streamrec.alerts import Alert, alert_from_stream, encode_alert
from streamrec.events import Event, EventLimits, parse_event
from streamrec.example_dedupe import ExampleDedupe, rebuild_dedupe
from streamrec.kafka_clients import emptied_end, make_consumer, make_producer
from streamrec.redis_connection import REDIS_ERRORS, RedisClient, connect_redis
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings
from streamrec.structured_log import log_event
from streamrec.topics import Topics
from streamrec.training_examples import decode_example, is_next_click

logger = logging.getLogger("streamrec.drift")

HOUSEKEEPING_S = 1.0


class DriftLoop:
    """One monitor process; ``run`` until ``stop`` is set. Its drift, fine-tune and alert
    metrics are registered on ``metrics_registry``."""

    def __init__(
        self, settings: Settings, client: RedisClient, metrics_registry: CollectorRegistry
    ) -> None:
        self.settings = settings
        self.client = client
        self.metrics = DriftMetrics(metrics_registry)
        self.alert_metrics = AlertMetrics(metrics_registry)
        self.keys = RedisKeys(settings.redis.key_prefix)
        self.topics = Topics.from_settings(settings.kafka)
        self.monitor = DriftMonitor(settings)
        self.limits = EventLimits.from_settings(settings.events)
        self.repeats = ExampleDedupe(settings.flow.repeat_window)
        self.fanout: AlertFanout = build_fanout(
            settings, client, make_producer(settings.kafka, **{"linger.ms": 0}), self.alert_metrics
        )
        self.cursor = read_status(client, self.keys).get("signals_cursor", "0-0")
        self.finetune: BaseProcess | None = None
        drift = settings.drift
        self.schedule = FinetuneSchedule(
            drift.finetune_wait_examples, drift.finetune_wait_s, drift.finetune_skip_recovered
        )
        self.alerts_sent = 0
        self._last_finetune_id = read_status(client, self.keys).get("finetune_id", "")
        newest = client.xrevrange(self.keys.alerts, count=1)
        self._alerts_cursor = newest[0][0].decode() if newest else "0-0"
        self._prometheus = PrometheusAlertSink(self.alert_metrics)
        self.canary = CanaryLoop(settings, client, self.metrics, self.monitor.watch_promotion)

    def run(self, stop: threading.Event) -> None:
        consumer = make_consumer(self.settings.kafka, self.settings.drift.consumer_group)
        self._rebuild_repeats(consumer)
        consumer.subscribe(
            [self.topics.training_examples, self.topics.impressions, self.topics.clicks]
        )
        log_event(logger, "drift_monitor_started", detectors=list(self.monitor.detectors))
        next_housekeeping = 0.0
        try:
            while not stop.is_set():
                self._read_signals()
                self._read_bus(consumer)
                self.canary.read()
                if time.monotonic() >= next_housekeeping:
                    self._housekeeping(consumer)
                    next_housekeeping = time.monotonic() + HOUSEKEEPING_S
        finally:
            self._housekeeping(consumer)
            consumer.close()
            self.canary.close()
            self.fanout.close()
            log_event(logger, "drift_monitor_stopped", alerts=self.alerts_sent)

    def _rebuild_repeats(self, consumer: Consumer) -> None:
        """The repeat window as of the group's committed offsets on the examples topic."""
        topic = self.topics.training_examples
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            committed = consumer.committed([TopicPartition(topic, p) for p in partitions], 10)
        except (KafkaException, KeyError) as exc:  # no topic yet: nothing to rebuild
            log_event(logger, "repeat_window_not_rebuilt", logging.WARNING, error=repr(exc))
            return
        positions = {tp.partition: tp.offset for tp in committed if tp.offset > 0}
        records = rebuild_dedupe(self.settings.kafka, topic, self.repeats, positions)
        log_event(logger, "repeat_window_rebuilt", records=records)

    def _read_signals(self) -> None:
        reply = self.client.xread({self.keys.learner_signals: self.cursor}, count=500, block=20)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                self.cursor = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                try:
                    signal = LearnerSignal.from_fields(fields)
                except ValueError as exc:
                    log_event(logger, "bad_learner_signal", logging.WARNING, error=str(exc))
                    continue
                self.metrics.last_signal.set(time.time())
                self.metrics.observations.labels("hit_rate").inc(signal.examples)
                self._raise(self.monitor.on_learner_signal(signal))

    def _forget_if_emptied(self, consumer: Consumer, partition: int, offset: int) -> None:
        """A record at or below the newest one read is a re-read, unless the partition was
        emptied under the monitor (a broker restarted empty: its group offsets are gone and
        reading starts again at 0); then its repeat window starts afresh."""
        newest = self.repeats.newest(partition)
        topic = self.topics.training_examples
        if (
            newest is not None
            and offset <= newest
            and emptied_end(consumer, topic, partition, newest + 1) is not None
        ):
            self.repeats.forget(partition)
            log_event(logger, "drift_topic_reset", logging.WARNING, partition=partition)

    def _read_bus(self, consumer: Consumer) -> None:
        for message in consumer.consume(2000, 0.05):
            if message.error() is not None:
                continue
            topic = message.topic()
            if topic == self.topics.training_examples:
                try:
                    example = decode_example(message.value())
                except ValueError:
                    continue
                partition, offset = message.partition(), message.offset()
                self._forget_if_emptied(consumer, partition, offset)
                if not self.repeats.is_new(partition, offset, example.example_id):
                    continue
                if not is_next_click(example):
                    continue  # an exposure outcome: not an input the detectors watch
                alerts = self.monitor.on_example(example, partition, offset)
                self._raise(alerts)
                continue
            event = parse_event(message.value(), self.limits)
            if not isinstance(event, Event):
                continue
            if event.type == "impression" and event.request_id:
                self._raise(
                    self.monitor.on_impression(
                        event.request_id, event.items, message.partition(), message.offset()
                    )
                )
            elif event.type == "click":
                self._raise(self.monitor.on_click(event.request_id, event.item_id))

    def _raise(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            self.fanout.send(alert)
            self.alerts_sent += 1
            record_drift(self.client, self.keys, alert)
            if wants_finetune(alert, self.settings.drift.finetune_enabled):
                self._schedule_finetune(alert)
            if alert.detector == REGRESSED and self.settings.drift.auto_rollback:
                self._restore_previous(alert)

    def _restore_previous(self, alert: Alert) -> None:
        """A promoted version did worse live: serve the version before it again."""
        try:
            done = rollback_model(self.settings, self.client, None, reason=alert.message)
        except (LookupError, KeyError, RuntimeError, *REDIS_ERRORS) as exc:
            log_event(logger, "auto_rollback_failed", logging.ERROR, error=repr(exc))
            return
        log_event(logger, "auto_rollback", **done)

    def _schedule_finetune(self, alert: Alert) -> None:
        """Take the lock now; start once enough post-drift examples arrived (or time passed)."""
        if self.schedule.pending is not None or (
            self.finetune is not None and self.finetune.is_alive()
        ):
            return
        drift = self.settings.drift
        if not acquire_finetune_lock(self.client, self.keys, drift.finetune_timeout_s):
            log_event(logger, "finetune_skipped_cooldown", alert_id=alert.alert_id)
            return
        mark = self.monitor.quality_mark(alert)
        self.schedule.schedule(alert, mark, self.monitor.examples_seen, time.monotonic())
        log_event(
            logger,
            "finetune_scheduled",
            alert_id=alert.alert_id,
            wait_examples=drift.finetune_wait_examples,
        )

    def _start_due_finetune(self) -> None:
        monitor = self.monitor
        due = self.schedule.due(monitor.examples_seen, time.monotonic(), monitor.recovered)
        if due is None:
            return
        if due.skip:
            self._skip_finetune(due)
            return
        alert, drift = due.alert, self.settings.drift
        request = FinetuneRequest(
            trigger=alert.alert_id,
            replay_examples=drift.replay_examples,
            since_ms=alert.detected_at_ms - int(drift.finetune_lookback_s * 1000),
        )
        # spawn: a fresh interpreter, no forked Kafka/Redis clients or threads.
        context = multiprocessing.get_context("spawn")
        self.finetune = context.Process(
            target=run_finetune_process, args=(self.settings, request), name="finetune"
        )
        self.finetune.start()
        self.metrics.finetune_running.set(1)
        log_event(logger, "finetune_started", alert_id=alert.alert_id, pid=self.finetune.pid)

    def _skip_finetune(self, due: DueFinetune) -> None:
        """The learner healed while the fine-tune waited for its examples: say so, not run."""
        monitor = self.monitor
        level = monitor.level_since(due.mark)
        skipped = skipped_alert(due, level, monitor.signal_examples, monitor.model_version)
        self.fanout.send(skipped)
        self.alerts_sent += 1
        start_cooldown(self.client, self.keys, 0)  # a later alert may start one
        log_event(logger, "finetune_skipped", alert_id=due.alert.alert_id, hit_rate=level)

    def _housekeeping(self, consumer: Consumer) -> None:
        self._start_due_finetune()
        self.canary.check()
        for name, level in self.monitor.levels().items():
            if not math.isnan(level):  # NaN: no observation yet
                self.metrics.signal_level.labels(name).set(level)
        save_signal_cursor(self.client, self.keys, self.cursor)
        if self.monitor.examples_seen:
            try:
                consumer.commit(asynchronous=True)
            except Exception as exc:  # nothing consumed since the last commit
                log_event(logger, "commit_skipped", logging.DEBUG, error=repr(exc))
        if self.finetune is not None and not self.finetune.is_alive():
            self.finetune.join()
            log_event(logger, "finetune_exited", exitcode=self.finetune.exitcode)
            self.finetune = None
            self.metrics.finetune_running.set(0)
        self._export_finetune_result()
        self._count_other_alerts()

    def _count_other_alerts(self) -> None:
        """Count in Prometheus the alerts other processes (fine-tune, rollback) raised."""
        reply = self.client.xread({self.keys.alerts: self._alerts_cursor}, count=1000)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                self._alerts_cursor = entry_id.decode()
                alert = alert_from_stream(fields)
                if alert is not None and alert.detector not in self.monitor.detectors:
                    self._prometheus.send(alert, encode_alert(alert))

    def _export_finetune_result(self) -> None:
        """Turn a finished fine-tune (ours or a manual one) into metrics, once."""
        status = read_status(self.client, self.keys)
        finetune_id = status.get("finetune_id", "")
        if not finetune_id or finetune_id == self._last_finetune_id:
            return
        if status.get("finetune_verdict", "running") == "running":
            return
        self._last_finetune_id = finetune_id
        self.metrics.finetune_runs.labels(status["finetune_verdict"]).inc()
        promoted = status.get("finetune_candidate_version")
        if status["finetune_verdict"] == "promoted" and promoted:
            self.monitor.watch_promotion(int(promoted))
        self.metrics.finetune_duration.set(float(status.get("finetune_duration_s", "nan")))
        self.metrics.finetune_last.set(float(status.get("finetune_finished_ms", "0")) / 1000)
        for model in ("candidate", "serving"):
            value = status.get(f"finetune_{model}_hr")
            if value:
                self.metrics.finetune_hit_rate.labels(model).set(float(value))


def run_drift_monitor(
    settings: Settings, stop: threading.Event, metrics_registry: CollectorRegistry
) -> DriftLoop:
    """Run the monitor until ``stop`` is set, its metrics on ``metrics_registry``; returns
    the loop (for its counters)."""
    client = connect_redis(
        settings.redis.redis_url.get_secret_value(),
        socket_timeout=max(settings.redis.redis_timeout_s, 1.0),
    )
    loop = DriftLoop(settings, client, metrics_registry)
    loop.run(stop)
    return loop
