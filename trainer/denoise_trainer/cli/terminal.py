"""What the trainer's commands share: the two consoles, the progress bar and the catalog option."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, soft_wrap=True)  # progress and errors
out = Console(width=None if sys.stdout.isatty() else 200)  # results; pipes and logs get whole rows

CatalogOption = Annotated[
    str,
    typer.Option("--catalog", help="SQLAlchemy URL of the archive catalog, e.g. sqlite:///data/archive.sqlite."),
]


def progress_bar() -> Progress:
    """A bar with counts, elapsed and remaining time, and a free ``info`` field, on stderr."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )
