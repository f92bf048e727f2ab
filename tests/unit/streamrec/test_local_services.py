"""The private redis-server is configured from the Redis URL exactly as redis-py reads it."""

from __future__ import annotations

import pytest

from streamrec.local_services import redis_server_options


def required_password(url: str) -> str:
    options = redis_server_options(url)
    return options[options.index("--requirepass") + 1]


def test_the_server_listens_on_the_url_port_without_persistence() -> None:
    options = redis_server_options("redis://127.0.0.1:6390/0")
    assert options[options.index("--port") + 1] == "6390"
    assert options[options.index("--save") + 1] == ""
    default = redis_server_options("redis://localhost/0")
    assert default[default.index("--port") + 1] == "6379"
    assert "--requirepass" not in default


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("redis://:p%40ss@127.0.0.1:6390/0", "p@ss"),
        ("redis://default:p%2Fa%3Ass%25@localhost:6390/0", "p/a:ss%"),
        ("redis://:plain@127.0.0.1:6390/0", "plain"),
        ("redis://127.0.0.1:6390/0?password=p%26q%3Dr", "p&q=r"),
        # redis-py prefers the userinfo password to the query one.
        ("redis://:first@127.0.0.1:6390/0?password=second", "first"),
    ],
)
def test_the_server_requires_the_password_redis_py_sends(url: str, password: str) -> None:
    assert required_password(url) == password


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis://redis.internal:6379/0", "local"),
        ("rediss://127.0.0.1:6390/0", "local redis://"),
        ("unix:///tmp/redis.sock", "local redis://"),
        ("redis://app:pw@127.0.0.1:6390/0", "ACL user 'app'"),
        ("http://127.0.0.1:6390/0", "scheme"),
    ],
)
def test_urls_a_private_server_cannot_serve_are_refused(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        redis_server_options(url)
