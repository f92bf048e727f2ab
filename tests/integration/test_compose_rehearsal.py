"""The compose stack rehearsed without Docker: its streamrec services as local processes.

No Docker engine runs here, so this is the runtime check of the deployment: every
streamrec service of ``deploy/compose.yaml`` runs with the file's command and
environment (the Dockerfile's ENV included). Service hostnames become loopback
addresses with free ports, compose volumes become directories shared by the services
that mount them, the broker is the test session's and Redis is a private one that
requires a password, as in the compose file.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis
from confluent_kafka.admin import AdminClient

from streamrec.local_services import free_port
from streamrec.redis_keys import RedisKeys
from streamrec.settings import KafkaSettings
from streamrec.topics import Topics
from tests.deploy_manifests import COMPOSE, Container, compose_containers, compose_model
from tests.private_services import PrivateRedis

pytestmark = pytest.mark.integration

IMAGE_STATE_DIR = Path("/var/lib/streamrec")
LONG_RUNNING = ("flow-0", "flow-1", "learner", "drift", "serving")
READY_TIMEOUT_S = 180.0


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[str]:
    """A private redis-server started with ``--requirepass``, like the compose service."""
    server = PrivateRedis(tmp_path / "redis", password=uuid.uuid4().hex)
    yield server.url
    server.kill()


class Rehearsal:
    """Turns compose services into local commands and environments under ``root``."""

    def __init__(self, root: Path, overrides: dict[str, str]) -> None:
        self.root = root
        self.overrides = overrides
        self.services = {
            c.where.removeprefix("compose:"): c
            for c in compose_containers(compose_model(COMPOSE))
            if c.is_streamrec
        }
        self.hosts = {name: free_port() for name in self.services}
        for container in self.services.values():
            for volume in container.mounts.values():
                # Docker creates a volume's (empty) directory before the process starts.
                (root / "volumes" / volume).mkdir(parents=True, exist_ok=True)

    def local_path(self, service: str, container: Container, path: Path) -> Path:
        """Where a path of the container lives here: in its volume's directory, if mounted."""
        for target in sorted(container.mounts, key=lambda m: -len(Path(m).parts)):
            if path.is_relative_to(target):
                volume = container.mounts[target]
                return self.root / "volumes" / volume / path.relative_to(target)
        return self.root / "state" / service / path.relative_to(IMAGE_STATE_DIR)

    def environment(self, service: str) -> dict[str, str]:
        container = self.services[service]
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
        env |= container.env | self.overrides
        for key, value in env.items():
            if key.startswith("STREAMREC_") and Path(value).is_relative_to(IMAGE_STATE_DIR):
                env[key] = str(self.local_path(service, container, Path(value)))
        return env

    def argv(self, service: str) -> list[str]:
        """The service's argv with ``streamrec`` run by this interpreter, hosts on loopback."""
        argv = self.services[service].argv
        assert argv[0] == "streamrec"

        def to_loopback(match: re.Match[str]) -> str:
            host = match.group(1)
            return f"127.0.0.1:{self.hosts[host]}" if host in self.hosts else match.group(0)

        rest = [re.sub(r"([\w-]+):(\d+)", to_loopback, arg) for arg in argv[1:]]
        return [sys.executable, "-m", "cli", *rest]

    def start(self, service: str) -> subprocess.Popen:
        log = open(self.root / f"{service}.log", "ab")  # noqa: SIM115 - the child keeps it
        return subprocess.Popen(
            self.argv(service),
            env=self.environment(service),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self, service: str) -> str:
        return (self.root / f"{service}.log").read_text(errors="replace")[-2000:]


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def poll(check: Callable[[], bool], what: str, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not check():
        assert time.monotonic() < deadline, f"{what} not true after {READY_TIMEOUT_S}s\n{logs()}"
        time.sleep(0.25)


def test_the_compose_services_run_the_loop(
    broker: str, redis_with_password: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:10]
    ports = {name: free_port() for name in ("learner", "drift", "serving")}
    rehearsal = Rehearsal(
        tmp_path,
        {
            "STREAMREC_BOOTSTRAP_SERVERS": broker,
            "STREAMREC_REDIS_URL": redis_with_password,
            "STREAMREC_TOPIC_PREFIX": f"c{tag}-",
            "STREAMREC_KEY_PREFIX": f"compose-{tag}",
            # Both flow processes share this host; their metrics are checked statically.
            "STREAMREC_FLOW_METRICS_PORT": "0",
            "STREAMREC_LEARNER_METRICS_PORT": str(ports["learner"]),
            "STREAMREC_DRIFT_METRICS_PORT": str(ports["drift"]),
            "STREAMREC_SERVING_PORT": str(ports["serving"]),
        },
    )
    assert set(LONG_RUNNING) | {"topics"} <= set(rehearsal.services)
    env = rehearsal.environment("topics")
    job = subprocess.run(rehearsal.argv("topics"), env=env, capture_output=True, timeout=120)
    assert job.returncode == 0, job.stderr.decode()[-2000:]
    kafka = KafkaSettings(bootstrap_servers=broker, topic_prefix=f"c{tag}-")
    existing = AdminClient(kafka.client_config()).list_topics(timeout=10).topics
    assert set(Topics.from_settings(kafka).all()) <= set(existing)

    processes = {service: rehearsal.start(service) for service in LONG_RUNNING}
    try:

        def logs() -> str:
            return "\n".join(f"--- {s}\n{rehearsal.log_tail(s)}" for s in LONG_RUNNING)

        replay = subprocess.run(
            [sys.executable, "-m", "cli", "replay", "--limit", "3000"],
            env=env,
            capture_output=True,
            timeout=120,
        )
        assert replay.returncode == 0, replay.stderr.decode()[-2000:]
        serving = f"http://127.0.0.1:{ports['serving']}"
        poll(lambda: http_get(f"{serving}/readyz")[0] == 200, "serving ready", logs)

        client = redis.Redis.from_url(redis_with_password)
        keys = RedisKeys(f"compose-{tag}")
        answers: list[dict] = []

        def answered_by_the_model() -> bool:
            # A session whose items no current version holds yet (or a one-click session,
            # which yields no training example) gets the popularity fallback, with a null
            # model_version; the learner publishes versions holding the others within seconds.
            sessions = itertools.islice(client.scan_iter(keys.session_pattern()), 50)
            for key in sessions:
                session_id = key.decode().rsplit(":", 1)[1]
                status, body = http_get(f"{serving}/recommend?session_id={session_id}&k=5")
                assert status == 200, body
                answer = orjson.loads(body)
                if answer["model_version"] is not None:
                    answers.append(answer)
                    return True
            return False

        poll(answered_by_the_model, "a recommendation from the model", logs)
        assert answers[-1]["items"]

        flow_env = rehearsal.environment("flow-0")
        assert (
            flow_env["STREAMREC_FLOW_RECOVERY_DIR"]
            == (rehearsal.environment("flow-1")["STREAMREC_FLOW_RECOVERY_DIR"])
        )
        assert list(Path(flow_env["STREAMREC_FLOW_RECOVERY_DIR"]).glob("part-*"))
        store = Path(rehearsal.environment("learner")["STREAMREC_MODEL_STORE_DIR"])
        assert store == Path(rehearsal.environment("serving")["STREAMREC_MODEL_STORE_DIR"])
        assert list(store.glob("*.safetensors"))
        for service in ("learner", "drift"):
            assert http_get(f"http://127.0.0.1:{ports[service]}/metrics")[0] == 200, service
        alive = {s: p.poll() is None for s, p in processes.items()}
        assert all(alive.values()), f"{alive}\n{logs()}"
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
