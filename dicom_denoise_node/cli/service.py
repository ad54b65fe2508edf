"""The service's commands: run the node, migrate its catalog, check its peers and its spool, denoise files by hand.

Only `serve` (at start) and `migrate` create or migrate a catalog; `check` opens an existing one, and with --repair
takes the data directory's lock first, as `serve` does (store/lock.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dicom_denoise_node.cli.options import (
    EXIT_CATALOG,
    EXIT_IN_USE,
    ConfigOption,
    catalog_or_exit,
    console,
    load_or_exit,
    log,
    out,
    schema_exit,
)
from dicom_denoise_node.config import ConfigError, Destination
from dicom_denoise_node.model.registry import ModelError

if TYPE_CHECKING:
    from dicom_denoise_node.store.lock import DataDirLock


def serve(
    config: ConfigOption = None,
    role: Annotated[
        str | None,
        typer.Option(help="all, receive (SCP only) or worker (denoise and send); overrides [node] role."),
    ] = None,
) -> None:
    """Run the node: receive, denoise, send — until SIGTERM or Ctrl-C.

    Several nodes share one PostgreSQL catalog and one spool: receivers with `--role receive`, one worker per GPU
    with `--role worker` (docs/install.md). Example: `denoise-node serve --config /etc/denoise-node/denoise-node.toml`
    """
    from dicom_denoise_node.pipeline import Node
    from dicom_denoise_node.store.migrations import SchemaMismatch

    settings = load_or_exit(config)
    if role is not None:
        try:
            settings.node.role = role  # type: ignore[assignment]  (validated on assignment)
        except ValueError as exc:
            log.error("--role %s: expected all, receive or worker", role)
            raise typer.Exit(2) from exc
    try:
        Node(settings).serve_forever()
    except ModelError as exc:
        log.error("cannot start: %s", exc)
        raise typer.Exit(3) from exc
    except ConfigError as exc:  # a setting that only fails when used, e.g. an unreadable TLS certificate
        log.error("cannot start: %s", exc)
        raise typer.Exit(2) from exc
    except SchemaMismatch as exc:  # a catalog a newer denoise-node made: never run on it, never downgrade it
        log.error("cannot start: %s", exc)
        raise typer.Exit(EXIT_CATALOG) from exc
    except OSError as exc:
        log.error("cannot start: %s", exc)
        raise typer.Exit(4) from exc


def echo(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Peer host (default: each configured destination).")] = None,
    port: Annotated[int | None, typer.Option(help="Peer port.")] = None,
    aet: Annotated[str | None, typer.Option(help="Peer AE title.")] = None,
) -> None:
    """C-ECHO the configured destinations (or one peer given with --host/--port/--aet); a STOW-RS destination gets one
    QIDO-RS search instead (reachable, credentials accepted).

    Examples: `denoise-node echo -c etc/denoise-node.toml`;
    `denoise-node echo --host 127.0.0.1 --port 4242 --aet ORTHANC`
    """
    from dicom_denoise_node.send.scu import SendError
    from dicom_denoise_node.send.scu import echo as c_echo
    from dicom_denoise_node.send.stow import probe

    settings = load_or_exit(config)
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
            if dest.kind == "stow-rs":
                out.print(f"{dest.key}: {probe(dest, dest.timeout_s or settings.send.timeout_s)}")
                continue
            status = c_echo(dest, settings.node.ae_title)
            ok = status == 0
            out.print(f"{dest.key}: C-ECHO status 0x{status:04X} {'OK' if ok else 'FAILED'}")
            failed += not ok
        except SendError as exc:
            out.print(f"{dest.key}: [red]{escape(str(exc))}[/]")
            failed += 1
    raise typer.Exit(1 if failed else 0)


def _lock_or_exit(data_dir: Path, hint: str) -> DataDirLock:
    """The data directory's lock, as `serve` takes it (store/lock.py), or exit 4 naming the node that holds it."""
    from dicom_denoise_node.store.lock import DataDirLock, DataDirLocked

    lock = DataDirLock(data_dir)
    try:
        lock.acquire()
    except DataDirLocked as exc:
        console.print(f"[red]{escape(str(exc))}[/]: {hint}")
        raise typer.Exit(EXIT_IN_USE) from exc
    return lock


def migrate(config: ConfigOption = None) -> None:
    """Create the catalog, or bring its schema to this version's (what `serve` does at start); says from and to which
    revision.

    Stop every node that uses the catalog first (a shared PostgreSQL catalog: all of them): an older node must not
    run on a newer schema. Refused while a node holds this config's data directory (exit 4).
    Example: `denoise-node migrate -c /etc/denoise-node/denoise-node.toml`
    """
    from dicom_denoise_node.store.catalog import Catalog
    from dicom_denoise_node.store.migrations import SchemaMismatch

    settings = load_or_exit(config)
    lock = _lock_or_exit(settings.node.data_dir, "stop it first (`serve` migrates when it starts)")
    try:
        catalog = Catalog(settings.catalog_url)
    except SchemaMismatch as exc:  # a newer denoise-node's schema: never downgraded
        raise schema_exit(exc) from exc
    finally:
        lock.release()
    before, after = catalog.db.schema_change or (None, "?")
    catalog.close()
    where = escape(settings.catalog_url_shown)
    if before == after:
        out.print(f"catalog {where} is at revision {after}, this denoise-node's: nothing to do")
    else:
        out.print(f"catalog {where} migrated from revision {before or 'none (a new catalog)'} to {after}")


def check(
    config: ConfigOption = None,
    repair: Annotated[
        bool, typer.Option(help="Repair: index or remove orphans (takes the data directory's lock, as `serve` does).")
    ] = False,
) -> None:
    """Compare the spool with the catalog (what `serve` does at every start) and report mismatches.

    Without --repair it only reads (never creates a catalog or a folder). --repair is refused while a node runs on
    the data directory (exit 4). Example: `denoise-node check -c /etc/denoise-node/denoise-node.toml` (exit 1 when
    they disagree)
    """
    from dicom_denoise_node.store.spool import Spool
    from dicom_denoise_node.store.spool_check import check_spool

    settings = load_or_exit(config)
    with catalog_or_exit(settings) as catalog:
        lock = _lock_or_exit(settings.node.data_dir, "stop it to repair (it repairs at start)") if repair else None
        try:
            report = check_spool(Spool(settings.spool_dir, create=repair), catalog, repair=repair)
        finally:
            if lock is not None:
                lock.release()
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


def denoise(
    in_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Folder of one CT series.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for the derived series.")],
    config: ConfigOption = None,
    model: Annotated[str | None, typer.Option(help="Model file or registry dir (overrides [model] path).")] = None,
    strength: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="0 = source … 1 = model output (overrides [model] strength).")
    ] = None,
    self_ensemble: Annotated[
        int | None,
        typer.Option(help="Flips/turns averaged per tile: 0 = the model's own, 1 = off, 2, 4, 8 (overrides [model])."),
    ] = None,
) -> None:
    """Denoise a folder of CT files into a derived series, without the network (same code as the node).

    Example: `denoise-node denoise ./ld-series ./denoised --model models/cyclegan-v1.json`
    """
    from pydicom import dcmread

    from dicom_denoise_node.denoise.series import NothingToDenoise
    from dicom_denoise_node.pipeline import load_denoiser

    settings = load_or_exit(config)
    if model:
        settings.model.path = model
    if strength is not None:
        settings.model.strength = strength
    if self_ensemble is not None:
        try:
            settings.model.self_ensemble = self_ensemble  # validated on assignment
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--self-ensemble") from exc
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
