"""``streamrec chaos``: the whole loop under the faults production brings, and what it kept.

The loop (flow, learner, drift monitor, serving) runs on a broker and a Redis of its own
(started here on free ports, so killing them touches nothing else) while recorded traffic
is replayed at a fixed rate. As the replay passes fixed shares of its events the run
SIGKILLs the flow and the learner (twice each), kills Redis (it comes back empty) and
restarts the memory-only broker (it comes back empty, topics recreated). The supervisor
restarts the loop's processes, as in production.

What it checks at the end, after the loop drained:

- **events**: every event the broker acknowledged is counted in its session's hash in
  Redis (``clicks`` + ``purchases`` against a count of the acknowledged events), or its
  absence is explained (``event_accounting.py``): its session ended (idle past the session
  TTL of event time) before a Redis loss or a later event, or it was acknowledged just
  before the memory-only broker restarted (lost with it, under a ``topic_reset`` alert).
  No event may be missing unexplained, and none counted twice;
- **examples**: the examples the learner counted (``examples_seen`` of the current version
  minus the trained version's) against the distinct examples the acknowledged events make
  (the flow's own builder): more would mean duplicates were learned;
- **lineage**: the final version still holds the trained model's items in their rows (it
  continued from the trained lineage instead of starting empty);
- **serving**: the longest time serving answered with an older version than the registry's
  current one (sampled twice a second, outside Redis outages), against 10 s.

The replay is cut at each fault: a share of the events is replayed (and acknowledged),
the fault strikes at once, while the loop is still working through them, and the replay
goes on. Event ids are deterministic, so what the broker acknowledged is known exactly.

One JSON line with the figures; exit 1 when a check fails.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from flows.example_builder import examples_from_events
from flows.feature_config import FeatureConfig
from loadtest.event_accounting import Faults, account_events
from loadtest.loop_session import isolated_environment, running_loop, train_first_model
from loadtest.traffic_replay import replay
from online_models.registry.weight_registry import WeightRegistry
from streamrec.events import Event, EventLimits, iso_to_ms
from streamrec.kafka_clients import ensure_topics
from streamrec.local_services import (
    free_port,
    services_down,
    services_up,
    start_broker,
    start_redis,
    wait_for,
)
from streamrec.process_supervisor import Supervisor
from streamrec.recorded_events import only_events, read_recorded
from streamrec.redis_connection import REDIS_ERRORS, RedisClient, connect_redis
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings, load_settings
from streamrec.topics import Topics

console = Console(stderr=True)
SERVING_LAG_LIMIT_S = 10.0
LOSS_ALERTS = frozenset({"topic_reset"})
# Events acknowledged this long before a broker restart may not have been read by the flow
# yet; the memory-only broker loses them (loadtest/event_accounting.py).
BROKER_UNREAD_S = 2.0
STEADY_S = 15.0


@dataclass(frozen=True, slots=True)
class ChaosPlan:
    """What to replay, how fast, and when each fault strikes (share of the events)."""

    since: str = "2014-06-15T00:00:00Z"
    events: int = 30_000
    rate: float = 400.0
    train_epochs: int = 1
    faults: tuple[tuple[float, str], ...] = (
        (0.15, "kill flow"),
        (0.30, "kill learner"),
        (0.45, "kill redis"),
        (0.60, "restart broker"),
        (0.75, "kill flow"),
        (0.85, "kill learner"),
    )
    drain_timeout_s: float = 180.0


@dataclass(slots=True)
class ServingWatch:
    """Samples the registry's current version and serving's, twice a second.

    ``longest_behind_s`` is the longest stretch in which serving answered with an older
    version than the current one. Samples where either cannot be read (a Redis outage)
    end a stretch: an outage is not staleness, and is measured apart.
    """

    current_version: Callable[[], int | None]
    serving_url: str
    longest_behind_s: float = 0.0
    samples: int = 0
    _behind_since: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                current = self.current_version()
                with urllib.request.urlopen(self.serving_url, timeout=1) as response:  # noqa: S310
                    serving = orjson.loads(response.read())["version"]
            except (*REDIS_ERRORS, OSError, ValueError, KeyError):
                self._behind_since = None
                continue
            if current is None:
                continue
            self.samples += 1
            now = time.monotonic()
            if serving is not None and serving >= current:
                self._behind_since = None
            elif self._behind_since is None:
                self._behind_since = now
            else:
                self.longest_behind_s = max(self.longest_behind_s, now - self._behind_since)

    def stop(self) -> None:
        self._stop.set()


@dataclass(slots=True)
class Figures:
    """What the run saw while it ran."""

    acked: list[Event]
    faults: list[dict[str, Any]]
    restarts: dict[str, int]
    longest_behind_s: float
    serving_samples: int
    rate: float


def own_services(run_dir: Path) -> dict[str, str]:
    """A broker and a Redis of this run's own (on free ports), and its state directory."""
    return {
        "STREAMREC_STATE_DIR": str(run_dir),
        "STREAMREC_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "STREAMREC_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }


def run_chaos(plan: ChaosPlan = ChaosPlan()) -> dict[str, Any]:
    """Run the loop through the plan's faults; the figures and whether every check held."""
    run = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = load_settings()
    run_dir = (base.state_dir / "chaos" / run).resolve()
    os.environ.update(isolated_environment(f"chaos-{run}", run_dir) | own_services(run_dir))
    settings = load_settings()
    client = connect_redis(settings.redis.redis_url.get_secret_value())
    registry = WeightRegistry(settings, client)
    events = _events(settings, plan)
    console.rule(f"streamrec chaos {run}: {len(events):,} events at {plan.rate:g}/s")
    services_up(settings)
    try:
        console.print("training the first model ...")
        trained = registry.load(int(train_first_model(plan.since, plan.train_epochs)["version"]))
        trained_seen = _examples_seen(registry, trained.version)
        acked_ids: set[str] = set()
        faults: list[dict[str, Any]] = []
        with running_loop(settings, run_dir / "logs") as supervisor:
            watch = ServingWatch(
                registry.current_version, f"http://127.0.0.1:{settings.serving.port}/model"
            )
            threading.Thread(target=watch.run, daemon=True).start()
            for phase, fault in _phases(events, plan):
                report = replay(
                    phase, settings.kafka, Topics.from_settings(settings.kafka),
                    rate=plan.rate, progress=False,
                    on_acked=lambda msg: acked_ids.add(orjson.loads(msg.value())["event_id"]),
                )  # fmt: skip
                console.print(f"{report.produced:,} of {len(phase):,} events acknowledged")
                if fault is not None:
                    console.print(f"[red]{fault}[/] after {len(acked_ids):,} events")
                    faults.append({"fault": fault, "after_events": len(acked_ids)})
                    _strike(fault, settings, supervisor)
            acked = [event for event in events if event.event_id in acked_ids]
            _wait_drained(client, RedisKeys(settings.redis.key_prefix), acked, plan)
            watch.stop()
            figures = Figures(
                acked, faults, supervisor.restarts, watch.longest_behind_s, watch.samples,
                plan.rate,
            )  # fmt: skip
        return _verdict(settings, client, registry, trained.item_ids, trained_seen, figures)
    finally:
        services_down(settings)


def _events(settings: Settings, plan: ChaosPlan) -> list[Event]:
    """The first ``plan.events`` recorded events from ``plan.since`` on."""
    since_ms = iso_to_ms(plan.since)
    limits = EventLimits.from_settings(settings.events)
    events = only_events(read_recorded(settings.data_dir, limits))
    return list(islice((event for event in events if event.ts >= since_ms), plan.events))


def _phases(events: list[Event], plan: ChaosPlan) -> Iterator[tuple[list[Event], str | None]]:
    """The replay cut at each fault: (the events up to it, the fault), then the rest."""
    start = 0
    for share, fault in sorted(plan.faults):
        end = int(share * len(events))
        yield events[start:end], fault
        start = end
    yield events[start:], None


def _strike(fault: str, settings: Settings, supervisor: Supervisor) -> None:
    """Crash a loop process, or kill Redis or the broker and bring it back empty."""
    target = fault.split()[-1]
    if target in ("flow", "learner"):
        supervisor.kill(target)
        return
    name = "redis" if target == "redis" else "broker"
    pid = int((settings.state_dir / "run" / f"{name}.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not _alive(pid), 10, f"{name} gone")
    if name == "redis":
        start_redis(settings)
    else:
        start_broker(settings)
        ensure_topics(settings.kafka, Topics.from_settings(settings.kafka).all())


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
        os.kill(pid, 0)
    except (ChildProcessError, ProcessLookupError):
        return False
    return True


def _examples_seen(registry: WeightRegistry, version: int) -> int:
    info = registry.info(version)
    return info.examples_seen if info else 0


def _counted(client: RedisClient, keys: RedisKeys, sessions: list[str]) -> dict[str, int]:
    """clicks + purchases of each session's hash in Redis (0 when missing)."""
    pipe = client.pipeline(transaction=False)
    for session in sessions:
        pipe.hmget(keys.session(session), "clicks", "purchases")
    return {
        session: int(clicks or 0) + int(purchases or 0)
        for session, (clicks, purchases) in zip(sessions, pipe.execute(), strict=True)
    }


def _wait_drained(
    client: RedisClient, keys: RedisKeys, acked: list[Event], plan: ChaosPlan
) -> None:
    """Until the features in Redis and the current version stop changing for a while."""
    sessions = sorted({event.session_id for event in acked})
    last: object = None
    steady_since = time.monotonic()
    deadline = steady_since + plan.drain_timeout_s
    while time.monotonic() < deadline:
        try:
            state: object = (
                sum(_counted(client, keys, sessions).values()),
                client.get(keys.model_current),
            )
        except REDIS_ERRORS:
            state = None
        if state != last:
            last, steady_since = state, time.monotonic()
        elif time.monotonic() - steady_since > STEADY_S:
            return
        time.sleep(1.0)
    console.print("[yellow]the loop did not settle before the deadline")


def _alerts_by_source(log_dir: Path) -> Counter[str]:
    """Alerts the processes logged (the logs outlive the Redis and broker restarts)."""
    counts: Counter[str] = Counter()
    for path in log_dir.glob("*.log"):
        for line in path.read_bytes().splitlines():
            if b'"event":"alert"' not in line:
                continue
            try:
                counts[orjson.loads(line)["detector"]] += 1
            except (orjson.JSONDecodeError, KeyError):
                continue
    return counts


def _phase_names(figures: Figures) -> list[str]:
    """``start``, then ``after <fault>`` for each fault in order."""
    return ["start"] + [f"after {f['fault']} ({f['after_events']})" for f in figures.faults]


def _phase_of(figures: Figures) -> dict[str, str]:
    """Event id -> the phase of the run it was acknowledged in."""
    names = _phase_names(figures)
    bounds = [f["after_events"] for f in figures.faults]
    phases = {}
    for index, event in enumerate(figures.acked):
        phases[event.event_id] = names[sum(1 for bound in bounds if index >= bound)]
    return phases


def _short_by_phase(figures: Figures, short: set[str]) -> dict[str, int]:
    """Per phase: the events of sessions Redis counts short (where a gap comes from)."""
    phases = _phase_of(figures)
    counts = Counter(phases[e.event_id] for e in figures.acked if e.session_id in short)
    return {name: counts[name] for name in _phase_names(figures) if counts[name]}


def _write_short_sessions(
    path: Path, figures: Figures, counted: dict[str, int], short: set[str]
) -> None:
    """Each short session's events (phase, time, type) and what Redis counts, to read after."""
    phases = _phase_of(figures)
    sessions: dict[str, dict[str, Any]] = {
        s: {"counted": counted[s], "events": []} for s in sorted(short)
    }
    for event in figures.acked:
        if event.session_id in short:
            sessions[event.session_id]["events"].append(
                [phases[event.event_id], event.ts, event.type, event.event_id]
            )
    path.write_bytes(orjson.dumps(sessions, option=orjson.OPT_INDENT_2))


def _verdict(
    settings: Settings,
    client: RedisClient,
    registry: WeightRegistry,
    trained_items: list[str],
    trained_seen: int,
    figures: Figures,
) -> dict[str, Any]:
    """The end state against what the broker acknowledged."""
    keys = RedisKeys(settings.redis.key_prefix)
    expected = Counter(event.session_id for event in figures.acked)
    counted = _counted(client, keys, sorted(expected))
    faults = Faults(
        redis_losses=tuple(f["after_events"] for f in figures.faults if f["fault"] == "kill redis"),
        broker_restarts=tuple(
            f["after_events"] for f in figures.faults if f["fault"] == "restart broker"
        ),
        broker_window=int(BROKER_UNREAD_S * figures.rate),
    )
    accounting = account_events(figures.acked, counted, settings.flow.session_ttl_s * 1000, faults)
    short = {s for s in expected if counted[s] < expected[s]}
    _write_short_sessions(settings.state_dir / "short_sessions.json", figures, counted, short)
    alerts = _alerts_by_source(settings.state_dir / "logs")
    config = FeatureConfig.from_settings(settings.flow)
    distinct = sum(1 for _ in examples_from_events(figures.acked, config))
    final = registry.load()
    learned = _examples_seen(registry, final.version) - trained_seen
    kept = final.item_ids[: len(trained_items)] == trained_items
    checks = {
        "no_event_counted_twice": accounting.counted_twice == 0,
        "no_unexplained_missing_events": accounting.unexplained == 0,
        "broker_losses_alerted": accounting.lost_with_broker == 0
        or bool(LOSS_ALERTS & set(alerts)),
        "no_duplicate_examples_learned": learned <= distinct,
        "continued_from_trained_lineage": kept,
        "serving_followed_within_10s": figures.longest_behind_s <= SERVING_LAG_LIMIT_S,
    }
    return accounting.as_dict() | {
        "short_sessions_by_phase": _short_by_phase(figures, short),
        "examples_distinct": distinct,
        "examples_learned": learned,
        "duplicate_examples_learned": max(0, learned - distinct),
        "final_version": final.version,
        "trained_items_kept": kept,
        "serving_longest_behind_s": round(figures.longest_behind_s, 1),
        "serving_samples": figures.serving_samples,
        "faults": figures.faults,
        "process_restarts": figures.restarts,
        "alerts": dict(alerts),
        "checks": checks,
        "passed": all(checks.values()),
    }
