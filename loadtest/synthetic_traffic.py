"""A seeded generator of shopping sessions, with known drift, for tests and drift work.

Shoppers browse within a category: the next click follows the current item's successor
(a "people who viewed this then viewed" habit) or is drawn from the category's popular
items; some sessions end in a purchase. A *regime* fixes the successors and popularity.

Scenarios:
- ``stationary``: one regime throughout.
- ``abrupt``: a new regime takes over at ``drift_start``.
- ``gradual``: new sessions switch to the new regime with a probability rising linearly
  from 0 at ``drift_start`` to 1 at ``drift_end``.
- ``new-items``: at ``drift_start`` a block of never-seen items takes over most sessions.

A known fraction of bad lines (each kind of rejection) is mixed in. The ground truth
(drift indices count valid events, 0-based) is returned and written beside the file.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson

START_TS_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z


class Scenario(enum.StrEnum):
    STATIONARY = "stationary"
    ABRUPT = "abrupt"
    GRADUAL = "gradual"
    NEW_ITEMS = "new-items"


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    scenario: Scenario = Scenario.STATIONARY
    events: int = 10_000
    seed: int = 0
    items: int = 1000
    categories: int = 10
    concurrent_sessions: int = 50
    mean_session_len: float = 6.0
    follow_successor: float = 0.7
    purchase_probability: float = 0.08
    mean_gap_ms: float = 200.0
    drift_at: float = 0.5
    gradual_width: float = 0.2
    new_items_share: float = 0.8
    bad_fraction: float = 0.0


@dataclass(slots=True)
class GroundTruth:
    scenario: str
    seed: int
    events: int
    drift_start: int | None
    drift_end: int | None
    bad_lines: int = 0
    bad_by_reason: dict[str, int] = field(default_factory=dict)
    items: int = 0
    new_items: int = 0


BAD_KINDS = (
    "malformed_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "invalid_value",
    "oversized",
    "ts_out_of_range",
    "unknown_type",
)


class _Regime:
    """Successor map and per-category popularity over a set of items."""

    def __init__(self, rng: np.random.Generator, item_ids: list[str], categories: int) -> None:
        self.item_ids = item_ids
        n = len(item_ids)
        self.category_of = rng.integers(0, categories, n)
        self.by_category = [np.flatnonzero(self.category_of == c) for c in range(categories)]
        self.by_category = [
            members if len(members) else np.arange(n) for members in self.by_category
        ]
        self.popularity = []
        for members in self.by_category:
            weights = 1.0 / np.arange(1, len(members) + 1) ** 1.1
            rng.shuffle(weights)
            self.popularity.append(weights / weights.sum())
        self.successor = np.empty(n, dtype=np.int64)
        for members in self.by_category:
            self.successor[members] = rng.permutation(members)
        self.category_weights = rng.dirichlet(np.ones(categories) * 2.0)


class _Session:
    __slots__ = ("sid", "regime", "category", "remaining", "last")

    def __init__(self, sid: str, regime: _Regime, category: int, remaining: int) -> None:
        self.sid = sid
        self.regime = regime
        self.category = category
        self.remaining = remaining
        self.last: int | None = None


def generate(config: GeneratorConfig) -> tuple[Iterator[bytes], GroundTruth]:
    """Lines of JSON (valid and bad) and the ground truth, both deterministic for the seed."""
    rng = np.random.default_rng(config.seed)
    base_ids = [f"i{n}" for n in range(config.items)]
    regime_a = _Regime(rng, base_ids, config.categories)
    scenario = Scenario(config.scenario)
    drift_start = None if scenario is Scenario.STATIONARY else int(config.events * config.drift_at)
    drift_end = drift_start
    new_count = 0
    if scenario is Scenario.NEW_ITEMS:
        new_count = max(10, config.items // 5)
        regime_b = _Regime(rng, [f"n{n}" for n in range(new_count)], config.categories)
    else:
        regime_b = _Regime(rng, base_ids, config.categories)
    if scenario is Scenario.GRADUAL and drift_start is not None:
        drift_end = drift_start + int(config.events * config.gradual_width)
    truth = GroundTruth(
        scenario.value,
        config.seed,
        config.events,
        drift_start,
        drift_end,
        items=config.items,
        new_items=new_count,
    )
    return _lines(config, rng, regime_a, regime_b, truth), truth


def _regime_for_new_session(
    config: GeneratorConfig,
    rng: np.random.Generator,
    index: int,
    a: _Regime,
    b: _Regime,
    truth: GroundTruth,
) -> _Regime:
    if truth.drift_start is None or index < truth.drift_start:
        return a
    if config.scenario == Scenario.GRADUAL:
        width = max(1, (truth.drift_end or 0) - truth.drift_start)
        share = min(1.0, (index - truth.drift_start) / width)
        return b if rng.random() < share else a
    if config.scenario == Scenario.NEW_ITEMS:
        return b if rng.random() < config.new_items_share else a
    return b


def _lines(
    config: GeneratorConfig, rng: np.random.Generator, a: _Regime, b: _Regime, truth: GroundTruth
) -> Iterator[bytes]:
    sessions: list[_Session] = []
    next_sid = 0
    ts = START_TS_MS
    bad = Counter[str]()
    index = 0
    while index < config.events:
        if config.bad_fraction and rng.random() < config.bad_fraction:
            kind = BAD_KINDS[int(rng.integers(0, len(BAD_KINDS)))]
            bad[kind] += 1
            truth.bad_lines += 1
            truth.bad_by_reason = dict(bad)
            yield _bad_line(kind, next_sid, ts)
            continue
        while len(sessions) < config.concurrent_sessions:
            regime = _regime_for_new_session(config, rng, index, a, b, truth)
            category = int(rng.choice(len(regime.category_weights), p=regime.category_weights))
            length = 1 + int(rng.geometric(1.0 / config.mean_session_len))
            sessions.append(_Session(f"s{config.seed}-{next_sid}", regime, category, length))
            next_sid += 1
        slot = int(rng.integers(0, len(sessions)))
        session = sessions[slot]
        if (
            config.scenario == Scenario.ABRUPT
            and truth.drift_start is not None
            and (index >= truth.drift_start)
        ):
            session.regime = b
        regime = session.regime
        if session.last is not None and rng.random() < config.follow_successor:
            item = int(regime.successor[session.last])
        else:
            members = regime.by_category[session.category]
            item = int(rng.choice(members, p=regime.popularity[session.category]))
        session.last = item
        session.remaining -= 1
        ts += 1 + int(rng.exponential(config.mean_gap_ms))
        item_id = regime.item_ids[item]
        category = str(int(regime.category_of[item]) + 1)
        yield orjson.dumps(
            {
                "event_id": f"{config.scenario}-{config.seed}-{index}",
                "type": "click",
                "session_id": session.sid,
                "ts": ts,
                "item_id": item_id,
                "category": category,
            }
        )
        index += 1
        if session.remaining <= 0:
            sessions.pop(slot)
            if rng.random() < config.purchase_probability and index < config.events:
                ts += 1
                yield orjson.dumps(
                    {
                        "event_id": f"{config.scenario}-{config.seed}-{index}",
                        "type": "purchase",
                        "session_id": session.sid,
                        "ts": ts,
                        "item_id": item_id,
                        "price": round(float(rng.uniform(1, 200)), 2),
                        "quantity": 1,
                    }
                )
                index += 1


def _bad_line(kind: str, sid: int, ts: int) -> bytes:
    good = {
        "event_id": f"bad-{sid}-{ts}",
        "type": "click",
        "session_id": f"s-{sid}",
        "ts": ts,
        "item_id": "i0",
    }
    if kind == "malformed_json":
        return b'{"event_id": "broken", "type": "cli'
    if kind == "not_an_object":
        return b"[1, 2, 3]"
    if kind == "missing_field":
        del good["item_id"]
    elif kind == "wrong_type":
        good["item_id"] = 12.5
    elif kind == "invalid_value":
        good["session_id"] = ""
    elif kind == "oversized":
        good["category"] = "x" * 10_000
    elif kind == "ts_out_of_range":
        good["ts"] = 1000
    elif kind == "unknown_type":
        good["type"] = "hover"
    return orjson.dumps(good)


def write_scenario(config: GeneratorConfig, out: Path) -> GroundTruth:
    """Write the stream to ``out`` and its ground truth to ``out`` + ``.truth.json``."""
    lines, truth = generate(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as handle:
        for line in lines:
            handle.write(line + b"\n")
    truth_path(out).write_bytes(orjson.dumps(asdict(truth), option=orjson.OPT_INDENT_2))
    return truth


def truth_path(out: Path) -> Path:
    return out.with_name(out.name + ".truth.json")
