"""The environment of a ``streamrec`` subprocess a test starts: the test's settings for
broker, topics, Redis, key prefix, state and model store, plus what the test adds."""

from __future__ import annotations

import os

from streamrec.settings import Settings


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """``os.environ`` with ``settings``' shared places, then ``extra`` (``STREAMREC_...``)."""
    return (
        dict(os.environ)
        | {
            "STREAMREC_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "STREAMREC_TOPIC_PREFIX": settings.kafka.topic_prefix,
            "STREAMREC_PARTITIONS": str(settings.kafka.partitions),
            "STREAMREC_REDIS_URL": settings.redis.redis_url.get_secret_value(),
            "STREAMREC_KEY_PREFIX": settings.redis.key_prefix,
            "STREAMREC_STATE_DIR": str(settings.state_dir),
            "STREAMREC_MODEL_STORE_DIR": str(settings.model.store_dir),
        }
        | extra
    )
