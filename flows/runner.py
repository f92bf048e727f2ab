"""Start the feature flow in this process: recovery directory, metrics endpoint, Bytewax.

Scaling: ``workers`` threads in one process (``-w``), or one call per process with
``process_id`` and the same ``addresses`` list in each (``-i``/``-a``, Bytewax's cluster
mode). Every process must see the same recovery directory (a shared disk, or one host).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from prometheus_client import REGISTRY, start_http_server

from flows.dataflow import build_flow
from flows.failure_log import log_failure
from flows.metrics import FlowMetrics
from flows.process_tuning import tune_flow_process
from streamrec.settings import Settings
from streamrec.structured_log import log_event

logger = logging.getLogger("streamrec.flow")


def ensure_recovery_dir(path: Path, partitions: int) -> bool:
    """Create the recovery partitions unless they exist; True if this call created them.

    Safe when several processes start at once: partitions are made in a scratch directory
    and renamed into place, so exactly one attempt wins and the others reuse its result.
    """
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        init_db_dir(scratch, partitions)
        try:
            scratch.rename(path)
        except OSError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(scratch)


def metrics_port(base: int, process_id: int | None, addresses: list[str] | None) -> int:
    """The Prometheus port of this process: ``base``, plus the process id only when all
    cluster processes share one host (there they would otherwise collide); on separate
    hosts or pods every process keeps ``base``, so scrape configs stay uniform."""
    hosts = {address.rpartition(":")[0] for address in addresses or []}
    return base + (process_id or 0) if len(hosts) == 1 and len(addresses or []) > 1 else base


def run_flow(
    settings: Settings,
    *,
    workers: int = 1,
    process_id: int | None = None,
    addresses: list[str] | None = None,
) -> None:
    """Run the flow until it ends (``stop_at_end``) or is stopped; blocks.

    This is the process's entry: the flow's metrics go on the default registry, which the
    metrics endpoint serves.
    """
    flow_settings = settings.flow
    tune_flow_process()
    recovery = None
    if flow_settings.recovery_enabled:
        created = ensure_recovery_dir(flow_settings.recovery_dir, flow_settings.recovery_partitions)
        recovery = RecoveryConfig(flow_settings.recovery_dir)
        log_event(logger, "flow_recovery", dir=str(flow_settings.recovery_dir), created=created)
    if flow_settings.metrics_port:
        port = metrics_port(flow_settings.metrics_port, process_id, addresses)
        start_http_server(port)
        log_event(logger, "flow_metrics", port=port)
    log_event(
        logger,
        "flow_start",
        workers=workers,
        process_id=process_id,
        addresses=addresses,
        shards=flow_settings.state_shards,
    )
    try:
        cli_main(
            build_flow(settings, FlowMetrics(REGISTRY)),
            workers_per_process=workers,
            process_id=process_id,
            addresses=addresses,
            epoch_interval=timedelta(seconds=flow_settings.snapshot_interval_s),
            recovery_config=recovery,
        )
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # Bytewax's own failures are Rust panics: not ``Exception``
        where = "bytewax"
        if addresses and type(exc).__name__ == "PanicException":
            # Seen when a member of the cluster went away (its connection broke): a Bytewax
            # cluster cannot go on without it; every member is restarted (docs/runbook.md).
            where = "bytewax cluster (a member went away?): restart every member"
        log_failure("flow_failed", where, exc)
        raise
    log_event(logger, "flow_end")
