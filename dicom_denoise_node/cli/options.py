"""What every `denoise-node` command shares: the consoles, the --config option, logging, loading the settings (a
config error is printed with the key and the file, exit code 2), opening the catalog without creating or migrating
it (exit code 6), and the exit codes.

Without --config (or ``DENOISE_NODE_CONFIG``), a command reads the installed config,
/etc/denoise-node/denoise-node.toml, if there is one, else the defaults (and says so); either way only `serve` and
`migrate` create a catalog.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from dicom_denoise_node.config import CONFIG_ENV, ConfigError, Settings, load_settings
from dicom_denoise_node.ops.logs import LogFormat, quiet_chatty_libraries, service_formatter

if TYPE_CHECKING:  # imported when a command opens the catalog: `--help` stays quick
    from dicom_denoise_node.store.catalog import Catalog
    from dicom_denoise_node.store.migrations import SchemaMismatch

console = Console(stderr=True, soft_wrap=True)
out = Console(width=None if sys.stdout.isatty() else 200)  # pipes and logs get whole rows
log = logging.getLogger("dicom_denoise_node.cli")  # one logger for every command

DEFAULT_CONFIG = Path("/etc/denoise-node/denoise-node.toml")  # where docs/install.md installs it


# Exit codes (docs/install.md). 1 is a command's own "no" (`check`: spool and catalog disagree; `retry`: no such
# series); each command documents the others it uses.
EXIT_CONFIG = 2  # a configuration error (the key and the file named), or bad usage
EXIT_UNREACHABLE = 3  # `status`: the node's HTTP server does not answer (`serve`, `denoise`: 3 = an unusable model)
EXIT_UNHEALTHY = 4  # `status`: /healthz reports a failed check
EXIT_IN_USE = 4  # `serve`, `check --repair`, `migrate`: a running node holds the data directory
EXIT_FAILED_SERIES = 5  # `status`: series are FAILED
EXIT_CATALOG = 6  # every command: the catalog is missing, or at another schema revision than this denoise-node's

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


def config_path(given: Path | None) -> Path | None:
    """The config file a command reads: --config (or ``DENOISE_NODE_CONFIG``), else the installed one if it exists,
    else None (the defaults), so that an admin's `denoise-node status` finds the node the service runs."""
    if given is not None:
        return given
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def load_or_exit(config: Path | None) -> Settings:
    """The settings of --config (or the environment, or the installed config), and logging set up from them; exit 2
    on a config error."""
    path = config_path(config)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        console.print(f"[bold red]config error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_CONFIG) from exc
    except OSError as exc:  # the installed config is 0640 root:denoise; an admin outside the group cannot read it
        console.print(f"[bold red]config error:[/] cannot read {escape(str(path))}: {escape(exc.strerror or str(exc))}")
        raise typer.Exit(EXIT_CONFIG) from exc
    setup_logging(settings.node.log_level, settings.node.log_format)
    if path is None:
        log.info("no --config given and no %s: the defaults (data_dir %s)", DEFAULT_CONFIG, settings.node.data_dir)
    return settings


def schema_exit(exc: SchemaMismatch) -> typer.Exit:
    """Say why the catalog cannot be used; the exit (code 6) to raise."""
    console.print(f"[red]{escape(str(exc))}[/]")
    return typer.Exit(EXIT_CATALOG)


@contextmanager
def catalog_or_exit(settings: Settings) -> Iterator[Catalog]:
    """The existing catalog at this code's schema, never created or migrated (that is `serve`'s and `migrate`'s);
    exit 6 with the reason when it is missing or at another revision."""
    from dicom_denoise_node.store.catalog import Catalog
    from dicom_denoise_node.store.migrations import SchemaMismatch

    try:
        catalog = Catalog(settings.catalog_url, migrate=False)
    except SchemaMismatch as exc:
        raise schema_exit(exc) from exc
    try:
        yield catalog
    finally:
        catalog.close()
