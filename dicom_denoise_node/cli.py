"""`denoise-node`: a thin typer app that parses arguments, then calls the modules that do the work."""

from __future__ import annotations

import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dicom_denoise_node import __version__
from dicom_denoise_node.config import CONFIG_ENV, ConfigError, Destination, Settings, load_settings
from dicom_denoise_node.model.registry import ModelError

app = typer.Typer(
    name="denoise-node",
    help="DICOM node that denoises low-dose CT series and sends the derived series to a PACS.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
console = Console(stderr=True, soft_wrap=True)
out = Console(width=None if sys.stdout.isatty() else 200)  # pipes and logs get whole rows
log = logging.getLogger("dicom_denoise_node.cli")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar=CONFIG_ENV,
        help="TOML config file (see etc/denoise-node.toml). Environment: DENOISE_NODE_<SECTION>__<KEY>.",
        exists=False,
        dir_okay=False,
    ),
]


def _setup_logging(level: str) -> None:
    """One line per event on stderr (journald captures it under systemd)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if sys.stderr.isatty():
        handler: logging.Handler = RichHandler(console=console, show_path=False, rich_tracebacks=True)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # max_instances=1 makes a busy job skip a tick by design; that is not worth a warning.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)


def _settings(config: Path | None) -> Settings:
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        console.print(f"[bold red]config error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    _setup_logging(settings.node.log_level)
    return settings


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(f"dicom-denoise-node {__version__}")
        raise typer.Exit()


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the node: receive, denoise, send — until SIGTERM or Ctrl-C.

    Example: `denoise-node serve --config /etc/denoise-node/denoise-node.toml`
    """
    from dicom_denoise_node.pipeline import Node

    settings = _settings(config)
    try:
        Node(settings).serve_forever()
    except ModelError as exc:
        log.error("cannot start: %s", exc)
        raise typer.Exit(3) from exc
    except ConfigError as exc:  # a setting that only fails when used, e.g. an unreadable TLS certificate
        log.error("cannot start: %s", exc)
        raise typer.Exit(2) from exc
    except OSError as exc:
        log.error("cannot start: %s", exc)
        raise typer.Exit(4) from exc


@app.command()
def echo(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Peer host (default: each configured destination).")] = None,
    port: Annotated[int | None, typer.Option(help="Peer port.")] = None,
    aet: Annotated[str | None, typer.Option(help="Peer AE title.")] = None,
) -> None:
    """C-ECHO the configured destinations (or one peer given with --host/--port/--aet).

    Examples: `denoise-node echo -c etc/denoise-node.toml`;
    `denoise-node echo --host 127.0.0.1 --port 4242 --aet ORTHANC`
    """
    from dicom_denoise_node.send.scu import SendError
    from dicom_denoise_node.send.scu import echo as c_echo

    settings = _settings(config)
    if host or port or aet:
        if not (host and port and aet):
            console.print("[red]--host, --port and --aet go together[/]")
            raise typer.Exit(2)
        targets = [Destination(ae_title=aet, host=host, port=port)]
    else:
        targets = settings.destinations
    if not targets:
        console.print("[yellow]no destinations configured[/]")
        raise typer.Exit(1)
    failed = 0
    for dest in targets:
        try:
            status = c_echo(dest, settings.node.ae_title)
            ok = status == 0
            out.print(f"{dest.key}: C-ECHO status 0x{status:04X} {'OK' if ok else 'FAILED'}")
            failed += not ok
        except SendError as exc:
            out.print(f"{dest.key}: [red]{escape(str(exc))}[/]")
            failed += 1
    raise typer.Exit(1 if failed else 0)


def _node_health(settings: Settings) -> dict[str, object] | str:
    """The running node's /healthz answer, or why it could not be read."""
    import json
    import urllib.error
    import urllib.request

    if not settings.http.enabled:
        return "[http] is disabled: health is only visible in the log"
    host = "127.0.0.1" if settings.http.host in ("0.0.0.0", "") else settings.http.host
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{settings.http.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return dict(json.load(response))
    except urllib.error.HTTPError as exc:  # 503 carries the report too
        return dict(json.load(exc))
    except (OSError, ValueError) as exc:
        return f"node not reachable at {url} ({exc}): is it running?"


@app.command()
def status(
    config: ConfigOption = None,
    limit: Annotated[int, typer.Option(help="Number of series (or associations) to show, newest first.")] = 50,
    associations: Annotated[
        bool, typer.Option("--associations", help="Show the association audit instead of the series.")
    ] = False,
) -> None:
    """Show the node's health, its queue and the series in the catalog (or the association audit).

    Example: `denoise-node status -c /etc/denoise-node/denoise-node.toml --limit 20`
    """
    import shutil

    from dicom_denoise_node.store.catalog import Catalog

    settings = _settings(config)
    catalog = Catalog(settings.catalog_url)
    try:
        health = _node_health(settings)
        if isinstance(health, str):
            out.print(f"health: {escape(health)}")
        else:
            checks = Table(title=f"health: {health.get('status')}")
            for col in ("check", "ok", "detail"):
                checks.add_column(col)
            for name, check in dict(health.get("checks", {})).items():  # type: ignore[call-overload]
                checks.add_row(name, "yes" if check["ok"] else "[red]NO[/]", escape(str(check["detail"])))
            out.print(checks)
        counts = catalog.state_counts()
        data_dir = settings.node.data_dir
        free = f"{shutil.disk_usage(data_dir).free / 2**20:.0f} MiB" if data_dir.exists() else "n/a"
        out.print(
            "series: "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
            + f" · queue {catalog.pending_series()} · free under {data_dir}: {free}"
        )
        if associations:
            from dicom_denoise_node.receive.audit import association_rows

            _print_associations(association_rows(catalog, limit))
        else:
            _print_series(catalog.series_overview(limit), settings.catalog_url)
    finally:
        catalog.close()


def _print_series(rows: list[dict[str, object]], where: str) -> None:
    table = Table(title=f"series in {where}")
    cols = ("series UID", "modality", "description", "rule", "state", "instances", "denoised", "derived")
    for col in (*cols, "attempts", "last error"):
        table.add_column(col)
    for r in rows:
        if r["state"] == "PROCESSING":
            denoised = f"{r['slices_done']}/{r['slices_total'] or '?'}"
        elif r["processing_seconds"] is not None and r["slices_total"]:
            denoised = f"{r['slices_total']} in {r['processing_seconds']:.1f} s"
        else:
            denoised = ""
        table.add_row(
            str(r["series_uid"]),
            str(r["modality"]),
            escape(str(r["description"])),
            escape(str(r["rule"] or "")),
            str(r["state"]),
            str(r["instances"]),
            denoised,
            str(r["derived"]),
            str(r["attempts"]),
            escape(str(r["last_error"] or "")[:80]),
        )
    out.print(table)


def _print_associations(rows: list[dict[str, object]]) -> None:
    table = Table(title="associations (newest first)")
    for col in ("started (UTC)", "calling AE", "called AE", "address", "result", "instances", "failed", "reason"):
        table.add_column(col)
    for r in rows:
        started = r["started_at"]
        table.add_row(
            started.strftime("%Y-%m-%d %H:%M:%S") if hasattr(started, "strftime") else str(started),
            escape(str(r["calling_aet"])),
            escape(str(r["called_aet"])),
            f"{r['address']}:{r['port']}",
            ("accepted, " + str(r["outcome"] or "open")) if r["accepted"] else "[red]rejected[/]",
            str(r["instances"]),
            str(r["failures"]),
            escape(str(r["reason"] or "")),
        )
    out.print(table)


rules_app = typer.Typer(help="Routing rules: which received series are denoised.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")


@rules_app.command("test")
def rules_test(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders (searched recursively).")],
    config: ConfigOption = None,
    calling_aet: Annotated[str, typer.Option(help="Calling AE the files would come from.")] = "",
) -> None:
    """Show, per series, which rule of the config routes it and why the others do not (no node needed).

    Example: `denoise-node rules test /data/incoming/CT_LD -c /etc/denoise-node/denoise-node.toml`
    """
    from dicom_denoise_node.complete.routing import classify_series, read_header

    settings = _settings(config)
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()))]
    if not files:
        console.print("[red]no files found[/]")
        raise typer.Exit(1)
    series: dict[str, list[Path]] = {}
    descriptions: dict[str, str] = {}
    unreadable = 0
    for f in files:
        try:
            header = read_header(f)
        except Exception:
            unreadable += 1
            continue
        uid = str(header.get("SeriesInstanceUID", "") or "(no SeriesInstanceUID)")
        series.setdefault(uid, []).append(f)
        descriptions.setdefault(uid, str(header.get("SeriesDescription", "") or ""))
    rules = settings.active_rules
    table = Table(title=f"{len(rules)} rule(s): {', '.join(r.name for r in rules)}")
    for col in ("series UID", "description", "files", "decision", "why"):
        table.add_column(col)
    for uid, members in series.items():
        match = classify_series(rules, [(f, calling_aet) for f in members])
        decision = f"denoise (rule {match.rule.name})" if match.rule else "[yellow]SKIPPED[/]"
        table.add_row(uid, escape(descriptions[uid]), str(len(members)), decision, escape(match.explain()))
    out.print(table)
    if unreadable:
        out.print(f"{unreadable} file(s) are not DICOM and were ignored")


@app.command()
def retry(series_uid: str, config: ConfigOption = None) -> None:
    """Re-queue a FAILED series (re-send if it failed sending, else re-process).

    Example: `denoise-node retry 1.2.826.0.1.3680043.8.498.1 -c /etc/denoise-node/denoise-node.toml`
    """
    from dicom_denoise_node.store.catalog import Catalog

    settings = _settings(config)
    catalog = Catalog(settings.catalog_url)
    try:
        state = catalog.retry(series_uid)
    except (KeyError, ValueError) as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from exc
    finally:
        catalog.close()
    out.print(f"series {series_uid} re-queued: state={state}")


@app.command()
def purge(
    series_uid: Annotated[str | None, typer.Argument(help="Series to purge (FAILED or SENT).")] = None,
    config: ConfigOption = None,
    failed: Annotated[bool, typer.Option("--failed", help="Purge every FAILED series.")] = False,
) -> None:
    """Delete the spool data of a FAILED (or SENT) series; the catalog keeps its row as the audit record.

    FAILED series are never removed by retention: they wait for `retry` or for this command.
    Example: `denoise-node purge --failed -c /etc/denoise-node/denoise-node.toml`
    """
    from dicom_denoise_node.store.catalog import Catalog, SeriesState
    from dicom_denoise_node.store.retention import purge_series
    from dicom_denoise_node.store.spool import Spool

    if (series_uid is None) == (not failed):
        raise typer.BadParameter("give one SERIES_UID or --failed")
    settings = _settings(config)
    catalog = Catalog(settings.catalog_url)
    spool = Spool(settings.node.data_dir)
    try:
        uids = [uid for _, uid in catalog.series_by_state(SeriesState.FAILED)] if failed else [str(series_uid)]
        for uid in uids:
            files = purge_series(spool, catalog, uid)
            out.print(f"series {uid} purged ({files} files)")
    except (KeyError, ValueError) as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from exc
    finally:
        catalog.close()


@app.command()
def check(
    config: ConfigOption = None,
    repair: Annotated[bool, typer.Option(help="Repair (only while the node is stopped).")] = False,
) -> None:
    """Compare the spool with the catalog (what `serve` does at every start) and report mismatches.

    Example: `denoise-node check -c /etc/denoise-node/denoise-node.toml` (exit 1 when they disagree)
    """
    from dicom_denoise_node.store.catalog import Catalog
    from dicom_denoise_node.store.spool import Spool
    from dicom_denoise_node.store.spool_check import check_spool

    settings = _settings(config)
    catalog = Catalog(settings.catalog_url)
    try:
        report = check_spool(Spool(settings.node.data_dir), catalog, repair=repair)
    finally:
        catalog.close()
    table = Table(title="spool vs catalog")
    table.add_column("finding")
    table.add_column("count", justify="right")
    for name, items in (
        ("received files without a catalog row", report.indexed_orphans),
        ("derived files without a catalog row", report.removed_orphans),
        ("unreadable files without a row", report.unreadable_orphans),
        ("received rows without a file", report.missing_received),
        ("derived rows without a file", report.missing_derived),
    ):
        table.add_row(name, str(len(items)))
    out.print(table)
    if not report.clean:
        raise typer.Exit(1)


@app.command()
def denoise(
    in_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Folder of one CT series.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for the derived series.")],
    config: ConfigOption = None,
    model: Annotated[str | None, typer.Option(help="Model file or registry dir (overrides [model] path).")] = None,
    strength: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="0 = source … 1 = model output (overrides [model] strength).")
    ] = None,
) -> None:
    """Denoise a folder of CT files into a derived series, without the network (same code as the node).

    Example: `denoise-node denoise ./ld-series ./denoised --model models/cyclegan-v1.json`
    """
    from pydicom import dcmread

    from dicom_denoise_node.denoise.series import NothingToDenoise
    from dicom_denoise_node.pipeline import load_denoiser

    settings = _settings(config)
    if model:
        settings.model.path = model
    if strength is not None:
        settings.model.strength = strength
    try:
        denoiser = load_denoiser(settings)
    except ModelError as exc:
        console.print(f"[red]cannot load model:[/] {escape(str(exc))}")
        raise typer.Exit(3) from exc
    files = sorted(p for p in in_dir.rglob("*") if p.is_file())
    by_series: dict[str, list[Path]] = {}
    for f in files:
        try:
            uid = str(dcmread(f, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]).SeriesInstanceUID)
        except Exception:  # not DICOM: listed, not fatal
            log.info("skipping %s: not a DICOM file", f)
            continue
        by_series.setdefault(uid, []).append(f)
    if not by_series:
        console.print(f"[red]no DICOM series found in {in_dir}[/]")
        raise typer.Exit(1)
    out_dir.mkdir(parents=True, exist_ok=True)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        for uid, paths in by_series.items():
            task = bar.add_task(f"series …{uid[-12:]}", total=len(paths))
            try:
                result = denoiser.denoise_series(
                    uid,
                    paths,
                    lambda s, sop: out_dir / s / f"{sop}.dcm",
                    progress=lambda k, n, t=task: bar.update(t, completed=k, total=n),
                )
            except NothingToDenoise as exc:
                console.print(f"[yellow]{escape(str(exc))}[/]")
                continue
            out.print(f"{uid} → {result.derived_series_uid}: {len(result.written)} instances in {out_dir}")


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
