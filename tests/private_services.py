"""The broker and Redis servers the tests start themselves, each on a free port.

The session-wide broker (and Redis, where the machine has none) in ``conftest.py`` are
shared by every test and never stopped. A fault test that kills or restarts its broker or
Redis gets one of its own instead, from the ``private_broker`` or ``private_redis``
fixture. Neither keeps data: a restart on the same port starts it empty, as a memory-only
tansu or a Redis without persistence restarts in production.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from streamrec.local_services import (
    free_port,
    port_open,
    redis_answers,
    redis_server_options,
    start_broker,
    wait_for,
)
from streamrec.settings import KafkaSettings, Settings

WAIT_S = 10.0  # bounds every start and every stop


class PrivateBroker:
    """A tansu broker on a free port, started by ``start_broker`` like ``services up``.

    ``kafka`` holds only its address (and the default partitions for topics created
    there); ``attach`` points a test's isolated settings at it.
    """

    def __init__(self, state_dir: Path) -> None:
        address = f"127.0.0.1:{free_port()}"
        kafka = KafkaSettings(bootstrap_servers=address)
        self.settings = Settings(state_dir=state_dir, kafka=kafka)
        self.running = False
        self._start()

    @property
    def kafka(self) -> KafkaSettings:
        return self.settings.kafka

    @property
    def pid(self) -> int:
        """The running broker's pid (from the pid file ``start_broker`` wrote)."""
        return int((self.settings.state_dir / "run" / "broker.pid").read_text())

    def attach(self, settings: Settings) -> Settings:
        """``settings`` (own topics, Redis, state) with this broker's address."""
        address = self.kafka.bootstrap_servers
        kafka = settings.kafka.model_copy(update={"bootstrap_servers": address})
        return settings.model_copy(update={"kafka": kafka})

    def _start(self) -> None:
        if not start_broker(self.settings):
            raise RuntimeError(f"something else answers at {self.kafka.bootstrap_servers}")
        self.running = True

    def kill(self) -> None:
        """SIGKILL, reaped and its port released; idempotent (a dead broker is left alone)."""
        if not self.running:
            return
        pid = self.pid
        self.running = False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        # Our child unless subprocess reaped it already; either way it is gone after this.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        host, _, port = self.kafka.bootstrap_servers.rpartition(":")
        wait_for(lambda: not port_open(host, int(port)), WAIT_S, "broker port released")

    def restart_empty(self) -> None:
        """Kill it and start a new, empty one on the same port (topics not made again)."""
        self.kill()
        self._start()


class PrivateRedis:
    """A redis-server without persistence on a free port; ``url`` includes ``password``."""

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        server = shutil.which("redis-server")
        if server is None:
            pytest.skip("redis-server is not installed")
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{free_port()}/0"
        # The options `services up` gives its own Redis: no persistence, the URL's password.
        self.command = [server, *redis_server_options(self.url)]
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = self._start()

    def attach(self, settings: Settings) -> Settings:
        """``settings`` (own key prefix, topics, state) with this server's URL."""
        redis = settings.redis.model_copy(update={"redis_url": SecretStr(self.url)})
        return settings.model_copy(update={"redis": redis})

    def _start(self) -> subprocess.Popen:
        proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, cwd=self.workdir)
        wait_for(lambda: redis_answers(self.url, 0.2), WAIT_S, "private redis")
        return proc

    def kill(self) -> None:
        """SIGKILL, reaped: everything it held is lost; idempotent."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT_S)

    def restart_empty(self) -> None:
        """Kill it and start a new, empty one on the same port."""
        self.kill()
        self.proc = self._start()


class PrivateRedisCluster:
    """A Redis Cluster of ``masters`` redis-servers (no replicas, no persistence) on free
    ports, made by ``redis-cli --cluster create``; ``url`` is its ``redis+cluster://`` URL.

    Each node keeps its ``nodes.conf`` in its own directory, so ``restart_empty`` brings a
    master back on its port with its node id and slots but none of its data: it rejoins, as
    a master without persistence restarting in production does.
    """

    NODE_TIMEOUT_MS = 3000

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            pytest.skip("redis-server or redis-cli is not installed")
        self.server = server
        self.ports = [free_port() for _ in range(masters)]
        self.bus_ports = {port: free_port() for port in self.ports}  # node-to-node links
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)
        self.workdir = workdir
        self.procs: dict[int, subprocess.Popen] = {}
        try:
            for port in self.ports:
                self._start(port)
            addresses = [f"127.0.0.1:{port}" for port in self.ports]
            subprocess.run(
                [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0"]
                + ["--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=WAIT_S * 3,
            )
            self.wait_ok()
        except BaseException:
            self.kill()
            raise

    def attach(self, settings: Settings) -> Settings:
        """``settings`` (own key prefix, topics, state) with this cluster's URL."""
        redis = settings.redis.model_copy(update={"redis_url": SecretStr(self.url)})
        return settings.model_copy(update={"redis": redis})

    def _start(self, port: int) -> None:
        node_dir = self.workdir / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        command = [self.server, "--bind", "127.0.0.1", "--port", str(port)]
        command += ["--save", "", "--appendonly", "no", "--cluster-enabled", "yes"]
        command += ["--cluster-config-file", str(node_dir / "nodes.conf")]
        command += ["--cluster-node-timeout", str(self.NODE_TIMEOUT_MS)]
        command += ["--cluster-port", str(self.bus_ports[port])]
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=node_dir
        )
        self.procs[port] = proc
        wait_for(lambda: redis_answers(f"redis://127.0.0.1:{port}/0", 0.2), WAIT_S, "node")

    def wait_ok(self) -> None:
        """Until every node reports ``cluster_state:ok`` (bounded)."""

        def all_ok() -> bool:
            return all(self._cluster_ok(port) for port in self.ports)

        wait_for(all_ok, WAIT_S * 3, "cluster_state:ok", interval_s=0.1)

    @staticmethod
    def _cluster_ok(port: int) -> bool:
        try:
            client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5)
            with contextlib.closing(client):
                return client.execute_command("CLUSTER INFO").get("cluster_state") == "ok"
        except (redis.RedisError, OSError):
            return False

    def master_of(self, slot: int) -> int:
        """The port of the master serving ``slot``."""
        client = redis.Redis(host="127.0.0.1", port=self.ports[0])
        with contextlib.closing(client):
            for start, end, (_, port, *_), *_ in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return int(port)
        raise LookupError(f"slot {slot} is not served")

    def restart_empty(self, port: int) -> None:
        """SIGKILL the master on ``port`` and start it again there, empty; it rejoins with
        its slots (its nodes.conf), and this returns once the cluster is ok again."""
        proc = self.procs[port]
        proc.kill()
        proc.wait(WAIT_S)
        self._start(port)
        self.wait_ok()

    def kill(self) -> None:
        """SIGKILL every node, reaped; idempotent."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(WAIT_S)
