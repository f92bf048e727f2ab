"""Typed settings for every streamrec process: the one place configuration is defined.

Each group reads environment variables with its own prefix (``STREAMREC_``,
``STREAMREC_FLOW_``, ``STREAMREC_LEARNER_``...), so a variable's name says which
component it tunes. Every default works on a developer machine with the embedded
broker and the local Redis. Settings are built once at start-up (``load_settings``)
and passed down explicitly; no module reads the environment on its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote_plus

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_STATE_DIR = Path(".streamrec")


def _group(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, extra="ignore", frozen=True)


class KafkaSettings(BaseSettings):
    """Where the event bus is and how to talk to it (passed through to librdkafka)."""

    model_config = _group("STREAMREC_")

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    ssl_ca_location: str = ""
    topic_prefix: str = Field(
        "", description="Prefix for every topic name (isolates tenants/tests)."
    )
    partitions: int = Field(4, ge=1, description="Partitions for topics created by streamrec.")
    replication_factor: int = Field(1, ge=1)
    fetch_wait_max_ms: int = Field(5, ge=0, description="Low for latency; librdkafka default 500.")

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by producers, consumers and admin clients."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username
            config["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            config["ssl.ca.location"] = self.ssl_ca_location
        return config


class RedisSettings(BaseSettings):
    """The feature and registry store."""

    model_config = _group("STREAMREC_")

    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    key_prefix: str = Field("streamrec", description="Prefix of every Redis key (isolation).")
    redis_timeout_s: float = Field(1.0, gt=0, description="Socket timeout for Redis calls.")


class EventSettings(BaseSettings):
    """Limits the event contract enforces on every event."""

    model_config = _group("STREAMREC_EVENT_")

    max_bytes: int = Field(4096, ge=64, description="Larger payloads are rejected as oversized.")
    min_ts_ms: int = Field(946684800000, description="Earliest accepted event time (2000-01-01).")
    max_future_s: float = Field(86400.0, ge=0, description="How far ahead of now ts may be.")


class FlowSettings(BaseSettings):
    """The feature dataflow (flows/)."""

    model_config = _group("STREAMREC_FLOW_")

    history_len: int = Field(50, ge=1, description="Last N item ids kept per session.")
    session_ttl_s: int = Field(7 * 86400, ge=1, description="Idle sessions expire after this.")
    lateness_s: float = Field(5.0, ge=0, description="Out-of-order tolerance in event time.")
    recovery_dir: Path = Field(
        DEFAULT_STATE_DIR / "recovery", description="Bytewax recovery (<state_dir>/recovery)."
    )
    recovery_enabled: bool = True
    batch_size: int = Field(2000, ge=1, description="Max messages per KafkaSource batch.")
    metrics_port: int = Field(9101, ge=0, description="Prometheus port (0 = off).")
    consumer_group: str = "streamrec-flow"
    snapshot_interval_s: int = Field(
        5, ge=1, description="Bytewax epoch/snapshot interval: at most this much is replayed."
    )
    repeat_window: int = Field(
        50_000,
        ge=1,
        description="Examples per partition within which consumers drop a repeated example_id "
        "(keep above what the flow emits per partition in a snapshot interval).",
    )
    recovery_partitions: int = Field(1, ge=1, description="Recovery DB partitions (fixed).")
    state_shards: int = Field(
        16, ge=1, description="Keyed state shards (units of parallelism); fixed per recovery dir."
    )
    publish_partitions: int = Field(
        1, ge=1, description="Output partitions writing Redis/Kafka; raise for several workers."
    )
    stop_at_end: bool = Field(False, description="Exit at the end of the topics (tests, bench).")
    purchase_weight: float = Field(5.0, gt=0, description="Weight of purchase examples.")
    popular_size: int = Field(1000, ge=1, description="Items kept in the popularity zset.")
    popular_state_items: int = Field(
        20000, ge=1, description="Items whose decayed count the flow keeps (>= popular_size)."
    )
    popular_half_life_s: float = Field(
        6 * 3600.0, gt=0, description="Half-life of popularity, in event time."
    )
    redis_check_s: float = Field(
        1.0,
        gt=0,
        description="How often each part of the flow's state checks that Redis still holds "
        "it (its marker key); after Redis lost data, everything is written again.",
    )
    exposure_horizon_s: float = Field(
        600.0,
        gt=0,
        description="How long after an impression (event time) a click or purchase still "
        "counts as its outcome; then the outcome closes and becomes an exposure example.",
    )
    exposure_max_open: int = Field(
        20_000,
        ge=1,
        description="Open impressions kept per state shard; beyond it the oldest close early.",
    )
    click_events: bool = Field(
        True,
        description="Keep each click's event id and time in the session hash (the events "
        "explanations name). Off saves about 2/3 of Redis memory per session (a hash with a "
        "value over 64 bytes leaves Redis' compact encoding); explanations then name no ids.",
    )


# Model sizes by name, for ``STREAMREC_MODEL_PRESET`` and the benchmarks' ``--preset``,
# with the training recipe that goes with each size (docs/model.md, "Size recipe"): the
# model's dropout here, training's batch size in ``TRAIN_RECIPES``; the rules that follow
# the shape itself (learning rate by width, initialisation by depth) are in
# ``online_models/offline/training.py``. "default" is the fields' own defaults (tiny, for
# CPU); the others are for a GPU. A setting given explicitly still wins over its preset.
MODEL_PRESETS: dict[str, dict[str, int | float]] = {
    "default": {},
    "large": {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "dropout": 0.2},
    "xl": {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "dropout": 0.3},
}
SIZE_FIELDS = ("hidden_size", "num_layers", "num_heads", "dropout")
TRAIN_RECIPES: dict[str, dict[str, int]] = {
    "default": {},
    "large": {"batch_size": 256},
    "xl": {"batch_size": 512},
}


class ModelSettings(BaseSettings):
    """Sizes of the transformer recommender: tiny on CPU, large on a GPU."""

    model_config = _group("STREAMREC_MODEL_")

    preset: str = Field(
        "default",
        description="Named sizes (default | large | xl); a size set on its own still wins.",
    )

    hidden_size: int = Field(64, ge=8)
    num_layers: int = Field(
        1,
        ge=1,
        description="Encoder layers; 1 on CPU: on the warm-up's dev stream it ranked as well "
        "as 2 (HR@20 0.550 vs 0.546) at a third more learner throughput.",
    )
    num_heads: int = Field(2, ge=1)
    max_seq_len: int = Field(20, ge=2)
    dropout: float = Field(0.2, ge=0, lt=1)
    initial_items: int = Field(1024, ge=16, description="Initial rows of the item table.")
    store_dir: Path = Field(
        DEFAULT_STATE_DIR / "models", description="Weight versions (<state_dir>/models)."
    )
    catalog_path: Path | None = Field(None, description="Item text catalog for cold start.")
    text_encoder_dir: Path | None = Field(
        None, description="Sentence encoder for cold start (default: the bundled MiniLM)."
    )
    scorer_threads: int = Field(0, ge=0, description="torch threads for scoring (0 = all).")
    scorer_dtype: str = Field(
        "auto", description="float32 | bfloat16 | auto (bfloat16 from 262144 items)."
    )
    scorer_shortlists: Literal["on", "off", "auto"] = Field(
        "auto",
        description="on | off | auto (on from 262144 items, on CPU): serving's top-K takes "
        "candidates from a 4-bit copy of the item table and ranks them exactly.",
    )
    keep_snapshots: int = Field(
        5,
        ge=1,
        description="Registry keeps versions from the Nth newest snapshot on: about "
        "PUBLISH_EVERY_S x SNAPSHOT_EVERY x N seconds of versions (75 s by default), which "
        "the drift fine-tune's held-out span needs to find its base version.",
    )
    covis_neighbours: int = Field(
        20, ge=1, le=1024, description="Co-visitation: successors kept per item (K)."
    )
    covis_window: int = Field(
        5,
        ge=0,
        description="Co-visitation: last history items paired with each target (0 = off).",
    )
    covis_decay: float = Field(
        0.98,
        gt=0,
        le=1,
        description="Co-visitation: an item's successor counts decay by this per unit of "
        "weight it receives (follows each item's recent sessions).",
    )
    covis_reverse: float = Field(
        1.0,
        ge=0,
        description="Co-visitation: each pair also counts backwards (target -> history item) "
        "at this share of its weight (0 = successors only).",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """Fill the sizes the preset names, where no size was given explicitly."""
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", "default")
        if preset not in MODEL_PRESETS:
            raise ValueError(f"unknown model preset {preset!r} (one of {sorted(MODEL_PRESETS)})")
        return {**MODEL_PRESETS[preset], **data}


def with_preset(model: ModelSettings, preset: str) -> ModelSettings:
    """``model`` at the sizes of ``preset`` (a command-line choice: it beats the environment)."""
    if preset not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {preset!r} (one of {sorted(MODEL_PRESETS)})")
    defaults = {name: ModelSettings.model_fields[name].default for name in SIZE_FIELDS}
    return model.model_copy(update={**defaults, **MODEL_PRESETS[preset], "preset": preset})


def train_recipe(model: ModelSettings, train: TrainSettings) -> TrainSettings:
    """``train`` with its preset's recipe (``TRAIN_RECIPES``) where nothing was set explicitly."""
    recipe = TRAIN_RECIPES.get(model.preset, {})
    return train.model_copy(
        update={name: value for name, value in recipe.items() if name not in train.model_fields_set}
    )


class TrainSettings(BaseSettings):
    """Full training and fine-tuning (streamrec train / finetune).

    Examples are built as the flow builds them, from ``FlowSettings`` (history length,
    purchase weight): there is no training-only copy of those knobs.
    """

    model_config = _group("STREAMREC_TRAIN_")

    epochs: int = Field(12, ge=1, description="Cap; early stopping usually ends sooner.")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(3e-3, gt=0)
    patience: int = Field(2, ge=0)
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    seed: int = 7
    weight_decay: float = Field(0.0, ge=0)
    max_steps_per_epoch: int = Field(0, ge=0, description="Cap for quick runs (0 = none).")
    device: str = Field("auto", description="auto | cpu | cuda: training and evaluation.")
    lr_reference_width: int = Field(
        64,
        ge=1,
        description="The width ``lr`` is set for: a model of hidden size H trains at "
        "lr * sqrt(lr_reference_width / H).",
    )
    warmup_fraction: float = Field(
        0.05, ge=0, lt=1, description="Share of the planned steps with a linear lr warm-up."
    )
    final_lr_fraction: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Cosine decay from the peak to this share of it at the last planned "
        "step (1 = a constant rate after the warm-up).",
    )


class LearnerSettings(BaseSettings):
    """The micro-batch online learner."""

    model_config = _group("STREAMREC_LEARNER_")

    batch_size: int = Field(256, ge=1, description="Max examples per micro-batch (B).")
    batch_ms: int = Field(100, ge=1, description="Max wait to fill a micro-batch (T).")
    lr: float = Field(3e-3, gt=0, description="Adam learning rate of the dense head.")
    row_lr: float = Field(2.0, gt=0, description="SGD step size of item rows and biases.")
    steps_per_batch: int = Field(2, ge=1, description="Head steps on each micro-batch.")
    grad_clip: float = Field(1.0, gt=0)
    publish_every_steps: int = Field(20, ge=1, description="Publish after K steps (K).")
    publish_every_s: float = Field(
        0.3,
        gt=0,
        description="...or at the first step S seconds after the last publish (S): most "
        "of how long a learned example waits for its version, and how often serving swaps "
        "(docs/model.md, Benchmark: 0.3 against 0.5 took event-to-weights p99 from 672 to "
        "468 ms for about 6% of serving's throughput).",
    )
    snapshot_every: int = Field(50, ge=1, description="Full snapshot every M versions (M).")
    consumer_group: str = "streamrec-learner"
    metrics_port: int = Field(9102, ge=0)
    sampled_negatives: int = Field(
        4096, ge=0, description="Shared random negatives per step (0 = full softmax)."
    )
    device: str = Field("auto", description="auto | cpu | cuda.")
    rank_dtype: str = Field(
        "auto",
        pattern="^(auto|float32|bfloat16)$",
        description="The all-items ranking pass: a bfloat16 pass plus an exact float32 "
        "re-check ranks the same; auto = bfloat16 on CUDA, float32 on CPU.",
    )
    torch_threads: int = Field(
        1, ge=0, description="CPU threads for torch (0 = torch default); 1 on a shared box."
    )
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Run the encoder's pass through torch.compile (online_models/model/"
        "compiled_backbone.py); auto = on CPU when a C++ compiler is found. A failed "
        "compile is logged and the eager code runs.",
    )
    signals_maxlen: int = Field(20000, ge=100, description="Length cap of the signals stream.")
    exposure_negative_weight: float = Field(
        1.0,
        ge=0,
        description="How much each shown-but-ignored item of a clicked list (exposure "
        "examples from the flow) counts against the clicked item in that list's softmax "
        "(1 = as much as the clicked item). Exposure feedback is on when both weights are > 0.",
    )
    exposure_positive_weight: float = Field(
        0.5,
        ge=0,
        description="Weight of a clicked list's softmax in the head's loss, relative to one "
        "next-click example. 1 and 0.5 were the best of 3 on the dev stream; on the evaluated "
        "stream HR@20 0.5367 vs 0.5337 without (docs/model.md).",
    )


# The learner knobs a version's metadata may carry, fitted on its shop's warm-up by
# ``streamrec train --tune``: metric ``learner.<field>`` (docs/model.md, "Self-tuning").
FITTED_LEARNER_FIELDS = ("row_lr", "sampled_negatives")
FITTED_PREFIX = "learner."


def fitted_values(metrics: dict[str, float]) -> dict[str, float]:
    """The fitted learner knobs among a version's ``metrics``."""
    keys = {FITTED_PREFIX + name for name in FITTED_LEARNER_FIELDS}
    return {key: value for key, value in metrics.items() if key in keys}


def with_fitted(learner: LearnerSettings, fitted: dict[str, float]) -> LearnerSettings:
    """``learner`` with the ``fitted`` knobs, except those set explicitly (they win)."""
    update: dict[str, Any] = {}
    for name in FITTED_LEARNER_FIELDS:
        value = fitted.get(FITTED_PREFIX + name)
        if value is not None and name not in learner.model_fields_set:
            update[name] = type(getattr(learner, name))(value)
    return learner.model_copy(update=update)


def _comma_list(value: Any) -> Any:
    """'1,2,4' (the environment's form) or JSON '[1, 2, 4]' to a list."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        return json.loads(value)
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class TuneSettings(BaseSettings):
    """Self-tuning per shop: knobs fitted on the warm-up's own validation split.

    ``streamrec train`` and ``evaluate`` tune unless ``--no-tune`` (or ``enabled`` false);
    a knob set explicitly (e.g. ``STREAMREC_LEARNER_ROW_LR``) is not searched: it wins.
    """

    model_config = _group("STREAMREC_TUNE_")

    enabled: bool = Field(True, description="Tune in train and evaluate (--tune/--no-tune).")
    budget_s: float = Field(
        300.0,
        gt=0,
        description="Wall-clock bound of the size search: no size starts after it (the "
        "report says what was skipped; within it the choice is deterministic).",
    )
    learner_budget_s: float = Field(
        120.0,
        gt=0,
        description="Wall-clock bound of the learner grid, from its start (a few seconds a "
        "point: a slow size search must not starve it).",
    )
    row_lrs: Annotated[tuple[float, ...], NoDecode] = Field(
        (1.0, 2.0, 4.0), min_length=1, description="Learner row steps tried ('1,2,4')."
    )
    negatives: Annotated[tuple[int, ...], NoDecode] = Field(
        (2048, 4096), min_length=1, description="Learner sampled negatives tried."
    )
    presets: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Model sizes tried ('default,large'); empty: default, large and xl "
        "when training runs on CUDA, the configured size alone on CPU.",
    )

    _split = field_validator("row_lrs", "negatives", "presets", mode="before")(_comma_list)

    @field_validator("presets", mode="after")
    @classmethod
    def _known_presets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in MODEL_PRESETS]
        if unknown:
            raise ValueError(f"unknown model presets {unknown} (one of {sorted(MODEL_PRESETS)})")
        return value


class ServingSettings(BaseSettings):
    """The HTTP recommendation service."""

    model_config = _group("STREAMREC_SERVING_")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1)
    max_k: int = Field(100, ge=1)
    default_k: int = Field(20, ge=1)
    auth_token: SecretStr = SecretStr("")
    max_body_bytes: int = Field(16384, ge=256)
    poll_interval_s: float = Field(2.0, gt=0, description="Registry polling fallback.")
    model_retry_base_s: float = Field(
        2.0, gt=0, description="First wait before loading a failed version again; doubles."
    )
    model_retry_max_s: float = Field(
        60.0, gt=0, description="Longest wait between two loads of a failed version."
    )
    swap_cpu_share: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Most of a worker's time spent loading newer versions: after a swap "
        "that took t seconds of the loader's CPU the next newer one waits t x (1 / share - 1); "
        "1: no wait.",
    )
    impression_batch_ms: int = Field(50, ge=1)
    impression_batch_size: int = Field(500, ge=1, description="Max impressions per flush.")
    impression_queue_max: int = Field(
        50000, ge=1, description="Impressions waiting for Kafka; beyond this they are dropped."
    )
    redis_timeout_s: float = Field(
        0.25,
        gt=0,
        description="Timeout of each Redis call on the request path (one retry, then 503).",
    )
    redis_max_connections: int = Field(
        256, ge=1, description="Redis pool size per worker (keep >= backpressure)."
    )
    max_exclude_items: int = Field(1000, ge=0, description="Longest POST exclude_items list.")
    category_refresh_s: float = Field(
        30.0, gt=0, description="How often the item -> category map is re-read."
    )
    shutdown_grace_s: float = Field(
        5.0, ge=0, description="Time to finish in-flight requests and flush impressions."
    )
    backpressure: int = Field(
        256, ge=1, description="Requests processed at once per worker; others wait in backlog."
    )
    score_batch_max: int = Field(
        16, ge=1, description="Most sessions scored in one model call (micro-batching)."
    )
    score_batch_wait_ms: float = Field(
        2.0, ge=0, description="Longest a request waits for others to join its batch."
    )
    device: str = Field("cpu", description="Where the scorer runs: cpu | cuda | auto.")
    explore_slots: int = Field(
        0, ge=0, description="Slots per list filled by exploring new items (0: off)."
    )
    explore_share: float = Field(
        1.0, ge=0, le=1, description="Share of requests whose list gets the exploration slots."
    )
    explore_max_shown: int = Field(
        100, ge=1, description="An item shown fewer times than this is new (may be explored)."
    )
    explore_sample: int = Field(
        64, ge=1, description="New items drawn per request for Thompson sampling (bounds work)."
    )
    explore_seed: int = Field(
        0, ge=0, description="Seed of the exploration draws (reproducible; mixed per worker)."
    )
    worker_index: int = Field(
        0,
        ge=0,
        description="This worker's index (0 .. workers-1), set by the server in each worker "
        "process; it keeps the exploration draws distinct per worker.",
    )
    explore_refresh_s: float = Field(
        10.0, gt=0, description="How often the new items' exposure counts are re-read."
    )


class DriftSettings(BaseSettings):
    """Drift detectors, alerting and fine-tune gating."""

    model_config = _group("STREAMREC_DRIFT_")

    adwin_delta: float = Field(0.0001, gt=0, lt=1, description="ADWIN confidence on hit@20.")
    ph_threshold: float = Field(50.0, gt=0, description="Page-Hinkley lambda on the loss.")
    ph_delta: float = Field(0.005, ge=0)
    ph_min_instances: int = Field(30, ge=1, description="Micro-batches before Page-Hinkley.")
    input_delta: float = Field(
        1e-3, gt=0, lt=1, description="ADWIN confidence on per-session category and length."
    )
    new_items_delta: float = Field(
        1e-8, gt=0, lt=1, description="ADWIN confidence on the per-example never-seen share."
    )
    ctr_delta: float = Field(0.002, gt=0, lt=1, description="ADWIN confidence on the CTR.")
    session_idle_s: float = Field(
        1800.0, gt=0, description="A session idle this long (event time) has ended."
    )
    detectors: str = Field(
        "hit_rate,loss,category_share,new_items,session_length,ctr",
        description="Comma-separated detectors to run (see online_models/drift/detectors.py).",
    )
    warmup_examples: int = Field(1000, ge=0)
    min_alert_spacing: int = Field(5000, ge=0, description="Examples between two alerts.")
    ctr_horizon: int = Field(
        200, ge=1, description="Impressions after which an unclicked one counts as a miss."
    )
    seen_items_capacity: int = Field(1_000_000, ge=1, description="Item ids remembered.")
    webhook_url: SecretStr = SecretStr("")
    webhook_timeout_s: float = Field(2.0, gt=0)
    webhook_retries: int = Field(4, ge=0)
    webhook_backoff_s: float = Field(0.5, gt=0, description="First retry wait; doubles.")
    webhook_queue: int = Field(1000, ge=1, description="Alerts waiting for the webhook.")
    alerts_stream_maxlen: int = Field(10000, ge=1, description="Alerts kept in Redis.")
    finetune_enabled: bool = True
    finetune_margin: float = Field(0.0, description="Candidate must beat serving by this HR@20.")
    finetune_cooldown_s: float = Field(600.0, ge=0)
    finetune_holdout_fraction: float = Field(
        0.2, gt=0, lt=1, description="Most recent share of the replay kept for the verdict."
    )
    finetune_min_holdout: int = Field(100, ge=1, description="Fewer held-out examples: reject.")
    finetune_timeout_s: float = Field(1800.0, gt=0)
    finetune_wait_examples: int = Field(
        2000, ge=0, description="Examples collected after a drift alert before its fine-tune."
    )
    finetune_wait_s: float = Field(
        300.0, ge=0, description="...or at most this long (the stream may be quiet)."
    )
    finetune_lookback_s: float = Field(
        60.0, ge=0, description="Replay from this long before the alert (the change itself)."
    )
    replay_examples: int = Field(20000, ge=100, description="Most examples a fine-tune replays.")
    finetune_reservoir_examples: int = Field(
        2000, ge=0, description="Older examples sampled from the topic beside the replay (0: none)."
    )
    finetune_reservoir_weight: float = Field(
        0.3, ge=0, le=1, description="Weight of a reservoir example relative to a recent one."
    )
    finetune_successor_keep: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of its co-visitation counts a row the recent window reaches keeps in "
        "a fine-tune's candidate, which then re-learns the window (1: the table as the learner "
        "left it).",
    )
    finetune_skip_recovered: bool = Field(
        True, description="Skip a due fine-tune when hit@20 has healed since its alert."
    )
    page_after_s: float = Field(
        1800.0, gt=0, description="A hit@20 drop not healed after this long pages."
    )
    recovered_within: float = Field(
        0.1, gt=0, lt=1, description="Healed: hit@20 within this share of its level before."
    )
    recovery_window: int = Field(
        2000, ge=1, description="Examples that judge a drop healed, or a promotion held."
    )
    auto_rollback: bool = Field(
        True, description="Restore the previous version when a promoted one does worse live."
    )
    promotion_margin: float = Field(
        0.02, ge=0, description="Worse live: hit@20 below the previous lineage's by this much."
    )
    rollout: Literal["promote", "canary"] = Field(
        "promote",
        description="What a fine-tune that passed the gate does: promote (becomes current) or "
        "canary (served on the experiment's canary arm until the canary watch decides).",
    )
    canary_min_impressions: int = Field(
        500, ge=1, description="Resolved impressions each arm needs before a canary verdict."
    )
    canary_alpha: float = Field(
        0.05, gt=0, lt=1, description="Significance of 'canary worse' (one-sided z-test)."
    )
    canary_deadline_s: float = Field(
        3600.0, gt=0, description="Longest a canary runs before too little traffic decides."
    )
    canary_on_deadline: Literal["control", "promote"] = Field(
        "control",
        description="At the deadline without enough impressions: keep the control "
        "(canary dropped) or promote the canary.",
    )
    metrics_port: int = Field(9103, ge=0)
    consumer_group: str = "streamrec-drift"


ARM_KINDS = ("online", "popularity", "canary")
PINNED_ARM_PREFIX = "pinned-"


class ExperimentSettings(BaseSettings):
    """The live experiment between model lineages: arms, their traffic shares, the control.

    An arm's name is its kind: ``online`` (the current model), ``popularity`` (the popular
    fallback for every request), ``canary`` (the version a fine-tune rolls out before it
    is promoted; served like ``online`` while there is none) or ``pinned-<version>`` (one
    version, frozen). Serving assigns each session to an arm by a hash of the session id
    and ``name``, so changing ``name`` reshuffles every session.
    """

    model_config = _group("STREAMREC_EXPERIMENT_")

    name: str = Field("default", min_length=1, description="Salt of the sticky assignment.")
    arms: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=lambda: {"online": 1.0},
        description="Arm -> traffic share, e.g. 'online=0.9,canary=0.1' or JSON; "
        "shares are normalised to sum to 1.",
    )
    control: str = Field("online", description="The arm the others are compared with.")

    @field_validator("arms", mode="before")
    @classmethod
    def _parse_arms(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lstrip().startswith("{"):
            return json.loads(value)
        if isinstance(value, str):
            pairs = (part.partition("=") for part in value.split(",") if part.strip())
            return {name.strip(): float(share) for name, _, share in pairs}
        return value

    @model_validator(mode="after")
    def _check_arms(self) -> ExperimentSettings:
        if not self.arms or any(share < 0 for share in self.arms.values()):
            raise ValueError("arms needs at least one arm and no negative share")
        if sum(self.arms.values()) <= 0:
            raise ValueError("arms' shares must not all be 0")
        for arm in self.arms:
            pinned = arm.removeprefix(PINNED_ARM_PREFIX)
            if arm not in ARM_KINDS and not (arm != pinned and pinned.isdigit()):
                raise ValueError(
                    f"unknown arm {arm!r}: use {', '.join(ARM_KINDS)} or {PINNED_ARM_PREFIX}<N>"
                )
        if self.control not in self.arms:
            raise ValueError(f"control arm {self.control!r} is not one of the arms")
        return self


class SloSettings(BaseSettings):
    """Service-level objectives checked by load tests and alert rules."""

    model_config = _group("STREAMREC_SLO_")

    freshness_p99_ms: float = 50.0
    event_to_weights_p99_ms: float = 2000.0
    serving_p99_ms: float = 5.0
    serving_error_rate: float = 0.0
    dlq_rate: float = 0.01
    consumer_lag: int = 10000


# Group -> (its directory field, the sub-directory of ``state_dir`` it defaults to).
_UNDER_STATE_DIR = {"flow": ("recovery_dir", "recovery"), "model": ("store_dir", "models")}


class Settings(BaseSettings):
    """All of streamrec's configuration, one group per component."""

    model_config = _group("STREAMREC_")

    state_dir: Path = Field(DEFAULT_STATE_DIR, description="pid files, logs, recovery, models.")
    data_dir: Path = Field(
        Path("../shared/data/yoochoose-sample"),
        description="The recorded sample used by the demo, replay, training and benchmarks "
        "(relative to the working directory; the default suits the repo root).",
    )
    log_level: str = "INFO"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    flow: FlowSettings = Field(default_factory=FlowSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    learner: LearnerSettings = Field(default_factory=LearnerSettings)
    tune: TuneSettings = Field(default_factory=TuneSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    experiment: ExperimentSettings = Field(default_factory=ExperimentSettings)
    slo: SloSettings = Field(default_factory=SloSettings)

    @field_validator(*_UNDER_STATE_DIR, mode="after")
    @classmethod
    def _place_under_state_dir(cls, group: BaseSettings, info: ValidationInfo) -> BaseSettings:
        """Recovery and the model store follow ``state_dir`` unless set explicitly.

        One variable then moves all local state; ``STREAMREC_FLOW_RECOVERY_DIR`` and
        ``STREAMREC_MODEL_STORE_DIR`` (or a group passed in with the field set) still win,
        which is what deployments mounting separate volumes rely on.
        """
        field, subdir = _UNDER_STATE_DIR[info.field_name or ""]
        if field in group.model_fields_set or "state_dir" not in info.data:
            return group
        return group.model_copy(update={field: info.data["state_dir"] / subdir})

    @model_validator(mode="after")
    def _check_canary_rollout(self) -> Settings:
        """A canary roll-out needs traffic: refuse it when no ``canary`` arm gets a share."""
        if self.drift.rollout == "canary" and self.experiment.arms.get("canary", 0) <= 0:
            raise ValueError(
                "STREAMREC_DRIFT_ROLLOUT=canary needs a 'canary' arm with a share in "
                "STREAMREC_EXPERIMENT_ARMS (e.g. 'online=0.9,canary=0.1')"
            )
        if self.drift.rollout == "canary" and self.experiment.control == "canary":
            raise ValueError("the canary arm cannot be the experiment's control")
        if self.drift.rollout == "canary" and (
            self.drift.canary_deadline_s <= self.flow.exposure_horizon_s
        ):
            raise ValueError(
                "STREAMREC_DRIFT_CANARY_DEADLINE_S must exceed STREAMREC_FLOW_EXPOSURE_HORIZON_S "
                "(no impression of the canary could resolve before its deadline)"
            )
        return self


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from the environment; ``overrides`` replace whole fields or groups."""
    return Settings(**overrides)


MASK = "****"
# Names (settings fields, URL query parameters) whose values are secrets. Matching is
# deliberately loose: masking a harmless value costs a look elsewhere, printing a
# password costs a rotation.
_SECRET_WORDS = ("pass", "pwd", "token", "secret", "credential", "signature", "auth")
_SECRET_ENDINGS = ("key", "sig")


def masked_settings(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, secrets masked (for printing and logs).

    Secret fields print as ``****``; the Redis URL prints with its secrets masked
    (``mask_url``), so where Redis is stays visible. Every other URL-like string is
    masked the same way.
    """
    data = settings.model_dump(mode="json")
    _mask(data)
    data["redis"]["redis_url"] = mask_url(settings.redis.redis_url.get_secret_value())
    return data


def is_secret_name(name: str) -> bool:
    """Whether a field or query parameter called ``name`` holds a secret."""
    lowered = unquote_plus(name).lower()
    return any(word in lowered for word in _SECRET_WORDS) or lowered.endswith(_SECRET_ENDINGS)


def mask_url(url: str) -> str:
    """``url`` with every secret replaced by ``****``; host, port, path and the rest kept.

    Masks the userinfo password (``redis://user:secret@host``) and the value of every
    query parameter named like a secret (``?password=``, ``&token=``, ``api_key=``...),
    which redis-py reads too. Both are found in the URL as given, so a password with
    unencoded ``/``, ``?``, ``#`` or ``@`` (base64 from ``openssl rand``) is still hidden:
    the password runs to the *last* ``@``, and where the two overlap one mask covers
    both, at worst with part of the host. Secrets in the path (webhook URLs) are not
    recognised: such URLs are ``SecretStr`` fields and print fully masked.
    """
    parts, end = [], 0
    for start, stop in sorted(_password_span(url) + _secret_param_spans(url)):
        if start >= end:
            parts += [url[end:start], MASK]
        end = max(end, stop)
    return "".join(parts) + url[end:]


def _password_span(url: str) -> list[tuple[int, int]]:
    """Where the userinfo password is: from the first ``:`` after ``//`` to the last ``@``."""
    scheme_end = url.find("://")
    at = url.rfind("@")
    colon = url.find(":", scheme_end + 3, at)
    return [(colon + 1, at)] if scheme_end >= 0 and colon >= 0 and at > colon + 1 else []


def _secret_param_spans(url: str) -> list[tuple[int, int]]:
    """Where the values of secret-named query parameters are.

    The query starts at the first ``?``, or, when the userinfo holds an unencoded ``?``,
    at the first ``?`` after the last ``@``; a value may hold an ``@`` too. Which one is
    meant cannot be told from the text, so the spans of both readings are returned (a
    harmless value masked is cheaper than a password shown).
    """
    spans = []
    for query in {url.find("?"), url.find("?", url.rfind("@") + 1)}:
        position = query + 1
        if position == 0:
            continue
        for param in url[position:].split("&"):
            name, equals, value = param.partition("=")
            if equals and value and is_secret_name(name):
                spans.append((position + len(name) + 1, position + len(param)))
            position += len(param) + 1
    return spans


def _mask(node: dict[str, Any]) -> None:
    """Mask, in place, values under secret names and the secrets in URL-like strings."""
    for key, value in node.items():
        if isinstance(value, dict):
            _mask(value)
        elif isinstance(value, str) and value and is_secret_name(key):
            node[key] = MASK
        elif isinstance(value, str) and "://" in value:
            node[key] = mask_url(value)
