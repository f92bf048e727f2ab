"""What every command shares: settings from the environment and one-JSON-line output."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import NoReturn, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table

from streamrec.settings import Settings, load_settings
from streamrec.structured_log import configure_logging

console = Console(stderr=True)
Report = TypeVar("Report")
SOURCE_HELP = "YooChoose dir, event JSON lines, or a log mapping .yaml (default: the sample)."


def settings_from_env() -> Settings:
    """Settings for a command, with logging configured from them."""
    settings = load_settings()
    configure_logging(settings.log_level)
    return settings


def print_json_line(data: object) -> None:
    """Benchmarks and ``--json`` outputs: exactly one JSON line on stdout."""
    sys.stdout.write(orjson.dumps(data).decode() + "\n")
    sys.stdout.flush()


def print_report(
    report: Report, tables: Callable[[Report], Iterable[Table]], as_json: bool
) -> None:
    """A report command's ending: one JSON line with ``--json``, else its rich tables on stdout."""
    if as_json:
        print_json_line(report)
        return
    stdout = Console()
    for table in tables(report):
        stdout.print(table)


def refuse(reason: str) -> NoReturn:
    """End a command that cannot do its job: the reason on one line, exit status 2 (no
    traceback: the reason is the whole story, and the process's log has the details)."""
    console.print(f"[red]error:[/] {reason}", highlight=False, soft_wrap=True)  # one line
    raise typer.Exit(2)
