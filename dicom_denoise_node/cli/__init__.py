"""`denoise-node`: a thin typer app that parses arguments, then calls the modules that do the work.

Commands live by subject: service.py (serve, echo, check, denoise), series.py (status, rules test, retry, purge);
options.py holds what they share. Installed packages add theirs (the trainer's) through the
``denoise_node.commands`` entry point.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Annotated

import typer

from dicom_denoise_node import __version__
from dicom_denoise_node.cli import series, service
from dicom_denoise_node.cli.options import log, out

app = typer.Typer(
    name="denoise-node",
    help="DICOM node that denoises low-dose CT series and sends the derived series to a PACS.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(f"dicom-denoise-node {__version__}")
        raise typer.Exit()


for command in (service.serve, service.echo, series.status, series.retry, series.purge, service.check, service.denoise):
    app.command()(command)
rules_app = typer.Typer(help="Routing rules: which received series are denoised.", no_args_is_help=True)
rules_app.command("test")(series.rules_test)
app.add_typer(rules_app, name="rules")


def _register_plugins() -> None:
    """Commands contributed by installed packages (the trainer) through the `denoise_node.commands` entry point."""
    for entry in entry_points(group="denoise_node.commands"):
        try:
            entry.load()(app)
        except ImportError as exc:  # e.g. the trainer's extras are not installed on a node-only host
            log.debug("commands from %s unavailable: %s", entry.name, exc)


_register_plugins()


def run() -> None:
    app()
