"""Command-line commands of this stage, registered on the ``streamrec`` app."""

from __future__ import annotations

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add this stage's commands (and its ``bench`` sub-command) to the CLI."""
