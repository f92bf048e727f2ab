"""Flow processes on one host get distinct metrics ports; on separate hosts, the same one."""

from __future__ import annotations

from flows.runner import metrics_port


def test_processes_sharing_a_host_get_offset_ports() -> None:
    addresses = ["127.0.0.1:2101", "127.0.0.1:2102"]
    assert [metrics_port(9101, i, addresses) for i in (0, 1)] == [9101, 9102]


def test_processes_on_separate_hosts_keep_the_base_port() -> None:
    addresses = ["flow-0.flow:2101", "flow-1.flow:2101"]
    assert [metrics_port(9101, i, addresses) for i in (0, 1)] == [9101, 9101]
    assert metrics_port(9101, None, None) == 9101
