"""What every `denoise-node` command shares: the consoles, the --config option, logging, and loading the settings
(a config error is printed with the key and the file, exit code 2)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from dicom_denoise_node.config import CONFIG_ENV, ConfigError, Settings, load_settings
from dicom_denoise_node.ops.logs import LogFormat, quiet_chatty_libraries, service_formatter

console = Console(stderr=True, soft_wrap=True)
out = Console(width=None if sys.stdout.isatty() else 200)  # pipes and logs get whole rows
log = logging.getLogger("dicom_denoise_node.cli")  # one logger for every command

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar=CONFIG_ENV,
        help="TOML config file (see etc/denoise-node.toml). Environment: `DENOISE_NODE_<SECTION>__<KEY>`.",
        exists=False,
        dir_okay=False,
    ),
]


def setup_logging(level: str, log_format: LogFormat = "text") -> None:
    """One line per event on stderr: rich on a terminal, else text or JSON with journald priorities under systemd
    (ops/logs.py)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if sys.stderr.isatty() and log_format == "text":
        handler: logging.Handler = RichHandler(console=console, show_path=False, rich_tracebacks=True)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(service_formatter(log_format, sys.stderr))
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    quiet_chatty_libraries(level)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # max_instances=1 makes a busy job skip a tick by design; that is not worth a warning.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)


def load_or_exit(config: Path | None) -> Settings:
    """The settings of --config (or the environment), and logging set up from them; exit 2 on a config error."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        console.print(f"[bold red]config error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    setup_logging(settings.node.log_level, settings.node.log_format)
    return settings
