"""A simulated shop: asks serving for recommendations for live sessions at a fixed rate.

It runs as its own process (``python -m loadtest.shop_simulator``) beside a replay. It
follows the ``clicks`` topic from its end to learn which sessions are live, sends
``GET /recommend`` for a recently active session every ``1/rate`` seconds (open loop:
latency is measured from when the request was due, so a stalled server is not hidden by
a waiting client), and checks each recommendation against the session's next click:
``served_hr`` is the share of next clicks that were in the list served just before.

Each list served is also an exposure outcome of the arm that answered
(``loadtest.experiment_report``): clicked when the session's next click was on it (its
shopper follows the recorded click), ignored when the session clicked nothing before the
next list or the end of the run. A replay runs sessions far faster than serving's clock,
so the event-time join of ``streamrec experiments report`` cannot judge its lists; the
order in which this shop sees clicks can.

It runs for ``--duration-s`` or until SIGTERM, then prints one JSON line: request counts,
errors, latency percentiles, served HR and a per-second series for plots.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import orjson
from confluent_kafka import OFFSET_END, TopicPartition

from loadtest.experiment_report import OutcomeTally
from loadtest.http_load import build_request, read_response
from streamrec.exposure_outcomes import ExposureOutcome
from streamrec.kafka_clients import make_consumer
from streamrec.settings import load_settings
from streamrec.topics import Topics

LIVE_SESSIONS = 5000


@dataclass(slots=True)
class ShopResult:
    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    served_hr: float = float("nan")
    judged_clicks: int = 0
    series: list[dict[str, float]] = field(default_factory=list)
    outcomes: dict[str, Any] = field(default_factory=dict)  # OutcomeTally.as_dict()


class LiveSessions:
    """Recently active sessions and the last list served to each (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recent: deque[str] = deque(maxlen=LIVE_SESSIONS)
        self._served: dict[str, ExposureOutcome] = {}
        self.hits = 0
        self.judged = 0
        self.tally = OutcomeTally()

    def clicked(self, session_id: str, item_id: str) -> None:
        with self._lock:
            shown = self._served.pop(session_id, None)
            if shown is not None:
                hit = item_id in shown.items
                self.judged += 1
                self.hits += hit
                clicked = (item_id,) if hit else ()
                self.tally.add(replace(shown, clicked=clicked, next_click=item_id))
            self._recent.append(session_id)

    def pick(self, rng: random.Random) -> str | None:
        with self._lock:
            if not self._recent:
                return None
            # Favour the most recent sessions: they are the ones a shopper is on now.
            back = min(len(self._recent) - 1, int(rng.expovariate(0.01)))
            return self._recent[-1 - back]

    def served(self, session_id: str, answer: dict[str, Any]) -> None:
        shown = ExposureOutcome(
            request_id=answer["request_id"],
            session_id=session_id,
            ts=0,
            items=tuple(item["item_id"] for item in answer.get("items", [])),
            model_version=answer.get("model_version"),
            arm=answer.get("arm"),
            explored=tuple(answer.get("explored", ())),
        )
        with self._lock:
            ignored = self._served.get(session_id)
            if ignored is not None:  # a newer list before any click: this one was ignored
                self.tally.add(ignored)
            self._served[session_id] = shown

    def close(self) -> OutcomeTally:
        """The tally with every list still waiting for a click counted as ignored."""
        with self._lock:
            for ignored in self._served.values():
                self.tally.add(ignored)
            self._served.clear()
            return self.tally


def follow_clicks(live: LiveSessions, stop: threading.Event) -> None:
    """Feed ``live`` from the clicks topic, starting at its end."""
    settings = load_settings()
    topic = Topics.from_settings(settings.kafka).clicks
    consumer = make_consumer(settings.kafka, "streamrec-shop-simulator")
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in partitions])
    try:
        while not stop.is_set():
            for message in consumer.consume(2000, 0.1):
                if message.error() is None:
                    event = orjson.loads(message.value())
                    live.clicked(event["session_id"], event["item_id"])
    finally:
        consumer.close()


async def drive_shop(
    host: str,
    port: int,
    token: str,
    rate: float,
    duration_s: float | None,
    k: int,
    live: LiveSessions,
    connections: int = 16,
) -> ShopResult:
    """Open-loop requests at ``rate`` per second for ``duration_s`` or until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    rng = random.Random(7)
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection(host, port))
    latencies: list[tuple[float, float]] = []
    errors: list[float] = []
    fallbacks = 0
    started = time.monotonic()

    async def one(due: float, session_id: str) -> None:
        nonlocal fallbacks
        reader, writer = await pool.get()
        try:
            writer.write(
                build_request(host, port, f"/recommend?session_id={session_id}&k={k}", token)
            )
            status, body = await asyncio.wait_for(read_response(reader), 5.0)
            done = time.monotonic()
            if status != 200:
                errors.append(done - started)
                return
            answer = orjson.loads(body)
            fallbacks += bool(answer.get("fallback"))
            live.served(session_id, answer)
            latencies.append((done - started, (done - due) * 1000))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, orjson.JSONDecodeError):
            errors.append(time.monotonic() - started)
            writer.close()
            reader, writer = await asyncio.open_connection(host, port)
        finally:
            pool.put_nowait((reader, writer))

    tasks = []
    sent = 0
    while not stop.is_set():
        now = time.monotonic()
        if duration_s is not None and now - started >= duration_s:
            break
        due = started + sent / rate
        if due > now:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), due - now)
            continue
        session_id = live.pick(rng)
        sent += 1
        if session_id is not None:
            tasks.append(asyncio.ensure_future(one(due, session_id)))
    await asyncio.gather(*tasks)
    return summarize(latencies, errors, fallbacks, live)


def summarize(
    latencies: list[tuple[float, float]], errors: list[float], fallbacks: int, live: LiveSessions
) -> ShopResult:
    result = ShopResult(
        requests=len(latencies) + len(errors),
        errors=len(errors),
        fallbacks=fallbacks,
        judged_clicks=live.judged,
        outcomes=live.close().as_dict(),
    )
    if latencies:
        ms = np.array([latency for _, latency in latencies])
        result.p50_ms, result.p99_ms = (round(float(v), 3) for v in np.percentile(ms, [50, 99]))
        result.max_ms = round(float(ms.max()), 3)
        seconds = np.array([at for at, _ in latencies]).astype(int)
        for second in range(int(seconds.max()) + 1):
            window = ms[seconds == second]
            if len(window):
                result.series.append(
                    {
                        "t_s": second,
                        "rps": len(window),
                        "p99_ms": round(float(np.percentile(window, 99)), 3),
                    }
                )
    if live.judged:
        result.served_hr = round(live.hits / live.judged, 4)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="Requests per second.")
    parser.add_argument("--duration-s", type=float, help="Default: until SIGTERM or SIGINT.")
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args(argv)
    settings = load_settings()
    live = LiveSessions()
    stop = threading.Event()
    follower = threading.Thread(target=follow_clicks, args=(live, stop), daemon=True)
    follower.start()
    result = asyncio.run(
        drive_shop(
            settings.serving.host,
            settings.serving.port,
            settings.serving.auth_token.get_secret_value(),
            args.rate,
            args.duration_s,
            args.k,
            live,
        )
    )
    stop.set()
    follower.join(5)
    sys.stdout.write(orjson.dumps(asdict(result)).decode() + "\n")


if __name__ == "__main__":
    main()
