"""The commands about received series: routing rules, retry, reprocess, purge (`status` is in status.py).

None of them creates or migrates the catalog (options.py ``catalog_or_exit``: exit 6 when it is missing or at
another schema revision)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dicom_denoise_node.cli.options import ConfigOption, catalog_or_exit, console, load_or_exit, out
from dicom_denoise_node.config import Settings


def rules_test(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders (searched recursively).")],
    config: ConfigOption = None,
    calling_aet: Annotated[str, typer.Option(help="Calling AE the files would come from.")] = "",
) -> None:
    """Show, per series, which rule of the config routes it and why the others do not (no node needed).

    Example: `denoise-node rules test /data/incoming/CT_LD -c /etc/denoise-node/denoise-node.toml`
    """
    from dicom_denoise_node.complete.routing import classify_series, describe_rule, read_header, series_rules

    settings = load_or_exit(config)
    missing = _missing_rule_models(settings)
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
    table.add_column("series UID", no_wrap=True)
    for col in ("description", "files", "decision", "why"):
        table.add_column(col)
    for uid, members in series.items():
        instances = [(f, calling_aet) for f in members]
        match = classify_series(rules, instances)
        decision = "[yellow]SKIPPED[/]"
        if match.rule is not None:  # one derived series per rule: the matching one, and those it falls through to
            made = "; ".join(describe_rule(r, settings) for r in series_rules(settings, match.rule.name, instances))
            decision = escape(f"denoise ({made})")
        table.add_row(uid, escape(descriptions[uid]), str(len(members)), decision, escape(match.explain()))
    out.print(table)
    if unreadable:
        out.print(f"{unreadable} file(s) are not DICOM and were ignored")
    for name, why in missing.items():
        console.print(f"[red]rule {escape(name)!r}: {escape(why)}[/] (`denoise-node serve` refuses to start)")
    if missing:
        raise typer.Exit(3)


def _missing_rule_models(settings: Settings) -> dict[str, str]:
    """Rules whose ``model`` is not in the registry → why (the node would refuse to start)."""
    from dicom_denoise_node.model.registry import ModelError, resolve_model_path

    missing = {}
    for rule in settings.active_rules:
        if rule.model:
            try:
                resolve_model_path(settings.model.path, rule.model)
            except ModelError as exc:
                missing[rule.name] = str(exc)
    return missing


def _refused(exc: KeyError | ValueError) -> typer.Exit:
    """Say why the catalog refused (no such series, not in a state for it); exit 1."""
    console.print(f"[red]{escape(str(exc.args[0] if exc.args else exc))}[/]")
    return typer.Exit(1)


def retry(
    series_uid: Annotated[str | None, typer.Argument(help="The FAILED series to re-queue.")] = None,
    config: ConfigOption = None,
    failed: Annotated[bool, typer.Option("--failed", help="Re-queue every FAILED series.")] = False,
) -> None:
    """Re-queue a FAILED series, or every one with --failed (re-send if it failed sending or was held by the guard,
    else re-process).

    Example: `denoise-node retry --failed -c /etc/denoise-node/denoise-node.toml`
    """
    if (series_uid is None) == (not failed):
        raise typer.BadParameter("give one SERIES_UID or --failed")
    settings = load_or_exit(config)
    with catalog_or_exit(settings) as catalog:
        try:
            requeued = (
                catalog.recovery.retry_failed()
                if failed
                else [(str(series_uid), catalog.recovery.retry(str(series_uid)))]
            )
        except (KeyError, ValueError) as exc:
            raise _refused(exc) from exc
    for uid, state in requeued:
        out.print(f"series {uid} re-queued: state={state}")
    if failed:
        out.print(f"{len(requeued)} FAILED series re-queued")


def reprocess(
    series_uid: Annotated[str, typer.Argument(help="The series to process again (SENT, DERIVED, FAILED, COMPLETE).")],
    config: ConfigOption = None,
    strength: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="0 = source … 1 = model output; default: the rule's (or [model])."),
    ] = None,
) -> None:
    """Process a series again, at another strength: a new derived series (its own UIDs) sent to the rule's
    destinations; the earlier derived series stays in the PACS.

    The strength stays with the series (its later retries use it); without --strength the rule's (or [model]
    strength) applies again. Example: `denoise-node reprocess 1.2.826.0.1.3680043.8.498.1 --strength 0.5 -c …`
    """
    settings = load_or_exit(config)
    with catalog_or_exit(settings) as catalog:
        try:
            was = catalog.recovery.reprocess(series_uid, strength)
        except (KeyError, ValueError) as exc:
            raise _refused(exc) from exc
    at = "the rule's strength" if strength is None else f"strength {strength:g}"
    out.print(f"series {series_uid} ({was}) re-queued at {at}: state=COMPLETE")


def purge(
    series_uid: Annotated[str | None, typer.Argument(help="Series to purge (FAILED or SENT).")] = None,
    config: ConfigOption = None,
    failed: Annotated[bool, typer.Option("--failed", help="Purge every FAILED series.")] = False,
) -> None:
    """Delete the spool data of a FAILED (or SENT) series; the catalog keeps its row as the audit record.

    FAILED series are never removed by retention: they wait for `retry` or for this command.
    Example: `denoise-node purge --failed -c /etc/denoise-node/denoise-node.toml`
    """
    from dicom_denoise_node.store.catalog import SeriesState
    from dicom_denoise_node.store.retention import purge_series
    from dicom_denoise_node.store.spool import Spool

    if (series_uid is None) == (not failed):
        raise typer.BadParameter("give one SERIES_UID or --failed")
    settings = load_or_exit(config)
    with catalog_or_exit(settings) as catalog:
        spool = Spool(settings.spool_dir)
        try:
            uids = (
                [uid for _, uid in catalog.housekeeping.series_by_state(SeriesState.FAILED)]
                if failed
                else [str(series_uid)]
            )
            for uid in uids:
                files = purge_series(spool, catalog, uid)
                out.print(f"series {uid} purged ({files} files)")
        except (KeyError, ValueError) as exc:
            raise _refused(exc) from exc
