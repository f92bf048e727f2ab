"""``streamrec loadtest``: a load run turned into a pass/fail deploy gate with reports."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from loadtest.load_run import LoadPlan, run_load
from loadtest.loop_session import running_loop, train_first_model
from loadtest.run_report import write_report
from loadtest.slo_gate import check_slos, load_slo_file, slo_table
from streamrec.events import iso_to_ms
from streamrec.local_services import services_up
from streamrec.redis_connection import connect_redis
from streamrec.settings import Settings

TRAIN_EPOCHS = 2


def run_load_gate(
    settings: Settings,
    source: Path,
    *,
    speed: float | None,
    rate: float | None,
    limit: int | None,
    since: str | None,
    shop_rate: float,
    slo_file: Path | None,
    report_dir: Path,
    start_loop: bool,
    train_until: str,
    progress: bool,
) -> dict[str, object]:
    """Run the load, check the SLOs, write ``report.json``/``report.html``; the verdict."""
    targets = load_slo_file(slo_file, settings.slo)
    name = "loadtest-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    plan = LoadPlan(
        source=source,
        since_ms=iso_to_ms(since) if since else None,
        speed=speed,
        rate=rate,
        limit=limit,
        shop_rate=shop_rate,
    )
    with contextlib.ExitStack() as stack:
        if start_loop:
            services_up(settings)
            if _registry_empty(settings):
                train_first_model(train_until, TRAIN_EPOCHS)
            stack.enter_context(running_loop(settings, settings.state_dir / "logs"))
        record, measured, _ = run_load(settings, plan, name, progress=progress)
    results = check_slos(targets, measured)
    record.slo = [r.as_dict() for r in results]
    page = write_report(record, report_dir / name)
    Console(stderr=True).print(slo_table(results))
    return {
        "passed": all(r.passed for r in results),
        "slo": record.slo,
        "report": str(page),
        "events": record.summary.get("events produced"),
    }


def _registry_empty(settings: Settings) -> bool:
    from online_models.registry.weight_registry import WeightRegistry

    client = connect_redis(settings.redis.redis_url.get_secret_value())
    return WeightRegistry(settings, client).current_version() is None
