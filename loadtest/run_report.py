"""The report of a run (demo or load test): PNG plots, an HTML page and a JSON file.

Every figure in it comes from what the run measured (``RunRecord``); nothing is
recomputed or assumed here. Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import html
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import orjson

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

from loadtest.experiment_report import LABELS, difference_text, share_text  # noqa: E402

Series = list[tuple[float, float]]


@dataclass(slots=True)
class RunRecord:
    """What a run measured. Times are seconds since the run started."""

    name: str
    summary: dict[str, object] = field(default_factory=dict)
    events_per_s: Series = field(default_factory=list)
    freshness_p99_ms: Series = field(default_factory=list)
    event_to_weights_p99_ms: Series = field(default_factory=list)
    serving_p99_ms: Series = field(default_factory=list)
    serving_rps: Series = field(default_factory=list)
    model_versions: Series = field(default_factory=list)
    hr_at_20: dict[str, Series] = field(default_factory=dict)
    alerts: list[dict[str, object]] = field(default_factory=list)
    slo: list[dict[str, object]] = field(default_factory=list)
    # ``loadtest.experiment_report.experiment_report``'s object; empty: no experiment ran.
    experiments: dict[str, Any] = field(default_factory=dict)


def _plot(
    path: Path,
    title: str,
    ylabel: str,
    lines: dict[str, Series],
    xlabel: str = "run time (s)",
    marks: list[float] | None = None,
) -> bool:
    if not any(lines.values()):
        return False
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    for label, series in lines.items():
        if series:
            xs, ys = zip(*series, strict=True)
            ax.plot(
                xs,
                ys,
                label=label,
                linewidth=1.4,
                drawstyle="steps-post" if label == "version" else "default",
            )
    for mark in marks or []:
        ax.axvline(mark, color="tab:red", linestyle="--", linewidth=1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(lines) > 1 or marks:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(record: RunRecord, directory: Path) -> Path:
    """Write ``report.html``, ``report.json`` and the PNGs into ``directory``; return the HTML."""
    directory.mkdir(parents=True, exist_ok=True)
    alert_times = [float(a["t_s"]) for a in record.alerts if "t_s" in a]
    plots = [
        (
            "events.png",
            "Events per second through the flow",
            "events/s",
            {"events/s": record.events_per_s},
            "run time (s)",
        ),
        (
            "freshness.png",
            "Feature freshness p99 (event produced to Redis write acked)",
            "ms",
            {"p99": record.freshness_p99_ms},
            "run time (s)",
        ),
        (
            "event_to_weights.png",
            "Event-to-weights p99 (click produced to version current)",
            "ms",
            {"p99": record.event_to_weights_p99_ms},
            "run time (s)",
        ),
        ("hr20.png", "Windowed HR@20: online vs static", "HR@20", record.hr_at_20, "examples"),
        (
            "versions.png",
            "Model versions over time (red: drift alerts)",
            "version",
            {"version": record.model_versions},
            "run time (s)",
        ),
        (
            "serving.png",
            "Serving latency p99 at the driven rate",
            "ms",
            {"p99": record.serving_p99_ms},
            "run time (s)",
        ),
    ]
    shown = []
    for filename, title, ylabel, lines, xlabel in plots:
        marks = alert_times if filename == "versions.png" else None
        if _plot(directory / filename, title, ylabel, lines, xlabel, marks):
            shown.append((filename, title))
    (directory / "report.json").write_bytes(
        orjson.dumps(asdict(record), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    page = directory / "report.html"
    page.write_text(_html(record, shown))
    return page


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def _html(record: RunRecord, shown: list[tuple[str, str]]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{_cell(v)}</td></tr>" for k, v in record.summary.items()
    )
    slo_rows = "".join(
        f"<tr class='{'pass' if s['passed'] else 'fail'}'><td>{html.escape(str(s['slo']))}</td>"
        f"<td>{_cell(s['target'])}</td><td>{_cell(s['measured'])}</td>"
        f"<td>{'PASS' if s['passed'] else 'FAIL'}</td></tr>"
        for s in record.slo
    )
    slo = (
        (
            f"<h2>SLO gate</h2><table><tr><th>SLO</th><th>target</th><th>measured</th>"
            f"<th>result</th></tr>{slo_rows}</table>"
        )
        if record.slo
        else ""
    )
    alert_rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{_cell(a.get(k, ''))}</td>"
            for k in ("t_s", "detector", "signal", "severity", "model_version")
        )
        + "</tr>"
        for a in record.alerts
    )
    alerts = (
        f"<h2>Drift alerts</h2><table><tr><th>t (s)</th><th>detector</th><th>signal</th>"
        f"<th>severity</th><th>model version</th></tr>{alert_rows}</table>"
        if record.alerts
        else "<h2>Drift alerts</h2><p>None raised.</p>"
    )
    experiments = _experiments_html(record.experiments)
    figures = "".join(
        f"<figure><img src='{f}' alt='{html.escape(t)}'><figcaption>"
        f"{html.escape(t)}</figcaption></figure>"
        for f, t in shown
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>streamrec run {html.escape(record.name)}</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
.pass td:last-child{{color:green}}.fail td:last-child{{color:#c00;font-weight:bold}}
img{{max-width:100%}}</style></head><body>
<h1>streamrec run {html.escape(record.name)}</h1>
<h2>Summary</h2><table>{rows}</table>{slo}{experiments}{alerts}<h2>Plots</h2>{figures}
</body></html>
"""


def _experiments_html(report: dict[str, Any]) -> str:
    """Per-arm shares with 95% intervals, each arm against the control, explored slots."""
    if not report:
        return ""
    metrics = report["metrics"]
    head = "".join(f"<th>{html.escape(LABELS[m])}</th>" for m in metrics)
    rows = "".join(
        f"<tr><td>{html.escape(row['arm'])}</td><td>{_cell(row['impressions'])}</td>"
        + "".join(f"<td>{share_text(row[m])}</td>" for m in metrics)
        + "</tr>"
        for row in report["arms"]
    )
    versus = "".join(
        f"<tr><td>{html.escape(row['arm'])}</td>"
        + "".join(f"<td>{difference_text(row['vs_control'][m])}</td>" for m in metrics)
        + "</tr>"
        for row in report["arms"]
        if row["vs_control"] is not None
    )
    slots = "".join(
        f"<tr><td>{name}</td><td>{_cell(report[key]['trials'])}</td>"
        f"<td>{share_text(report[key])}</td></tr>"
        for name, key in (("explored", "explored_slots"), ("model", "model_slots"))
    )
    control = html.escape(str(report["control"]))
    return (
        f"<h2>Experiment arms</h2><p>95% Wilson intervals; control: {control}.</p>"
        f"<table><tr><th>arm</th><th>impressions</th>{head}</tr>{rows}</table>"
        f"<h3>Difference to the control (95% interval, two-sided p-value)</h3>"
        f"<table><tr><th>arm</th>{head}</tr>{versus}</table>"
        f"<h3>Exploration: slots of the lists that explored</h3>"
        f"<table><tr><th>slots</th><th>shown</th><th>CTR</th></tr>{slots}</table>"
    )
