"""`denoise-node`: a thin typer app that parses arguments, then calls the modules that do the work.

Commands live by subject: service.py (serve, migrate, echo, check, denoise), status.py (status), series.py (rules
test, retry, reprocess, purge); options.py holds what they share (config, logging, the catalog, exit codes).
Installed packages add theirs (the trainer's) through the ``denoise_node.commands`` entry point.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Annotated

import typer

from dicom_denoise_node import __version__
from dicom_denoise_node.cli import series, service, status
from dicom_denoise_node.cli.options import console, log, out

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


for command in (
    service.serve,
    service.migrate,
    service.echo,
    status.status,
    series.retry,
    series.reprocess,
    series.purge,
    service.check,
    service.denoise,
):
    app.command()(command)
rules_app = typer.Typer(help="Routing rules: which received series are denoised.", no_args_is_help=True)
rules_app.command("test")(series.rules_test)
app.add_typer(rules_app, name="rules")


# Commands that the other installable parts add, by part: (what it is, distribution, what to install from a source
# tree). Without that part, each answers with one line saying how to install it instead of "No such command".
_TRAINER = ("the trainer", "dicom-denoise-trainer", "-e ./trainer")
_HARNESS = ("the harness", "dicom-denoise-harness", "-e ./trainer -e ./harness")
PART_COMMANDS = {
    "synth": _TRAINER,
    "catalog": _TRAINER,
    "train": _TRAINER,
    "evaluate": _TRAINER,
    "model": _TRAINER,
    "demo": _HARNESS,
}


def _register_plugins() -> dict[str, str]:
    """Commands contributed by installed packages (the trainer, the demo) through the `denoise_node.commands` entry
    point, found by group so that the node names no package of theirs. Returns the distributions that failed to
    load → why: a broken plugin is logged, never the end of `denoise-node serve`."""
    failed = {}
    for entry in entry_points(group="denoise_node.commands"):
        try:
            entry.load()(app)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("denoise-node: commands from %s (%s) not loaded: %s", entry.name, entry.value, reason)
            failed[entry.dist.name if entry.dist else entry.name] = reason
    return failed


def _registered_names() -> set[str]:
    commands = {c.name or c.callback.__name__.lower().replace("_", "-") for c in app.registered_commands if c.callback}
    return commands | {g.name or g.typer_instance.info.name or "" for g in app.registered_groups}


def _part_missing(command: str, part: tuple[str, str, str], failed: dict[str, str]) -> None:
    """A hidden stand-in for a command of a part that is not installed: any arguments, one line, exit code 2."""
    what, distribution, source = part
    if distribution in failed:
        hint = f"denoise-node {command} is part of {what}, which failed to load ({failed[distribution]})"
    else:
        hint = f"denoise-node {command} is part of {what}, which is not installed"
    hint += f": pip install {distribution} (from a source tree: pip install {source})"

    def stand_in() -> None:
        console.print(hint, markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)

    settings = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
    app.command(command, hidden=True, add_help_option=False, context_settings=settings)(stand_in)


def _register_parts() -> None:
    """The installed parts' commands, then a stand-in for each of theirs that none provided."""
    failed = _register_plugins()
    for name in sorted(set(PART_COMMANDS) - _registered_names()):
        _part_missing(name, PART_COMMANDS[name], failed)


_register_parts()


def run() -> None:
    app()
