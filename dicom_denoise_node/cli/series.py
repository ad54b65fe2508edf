"""The commands about received series: status (and the association audit), routing rules, retry, purge."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dicom_denoise_node.cli.options import ConfigOption, console, load_or_exit, out
from dicom_denoise_node.config import Settings


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

    settings = load_or_exit(config)
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
        counts = catalog.views.state_counts()
        data_dir = settings.node.data_dir
        free = f"{shutil.disk_usage(data_dir).free / 2**20:.0f} MiB" if data_dir.exists() else "n/a"
        out.print(
            "series: "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
            + f" · queue {catalog.views.pending_series()} · free under {data_dir}: {free}"
        )
        if associations:
            from dicom_denoise_node.receive.audit import association_rows

            _print_associations(association_rows(catalog, limit))
        else:
            _print_series(catalog.views.series_overview(limit), settings.catalog_url_shown)
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


def retry(series_uid: str, config: ConfigOption = None) -> None:
    """Re-queue a FAILED series (re-send if it failed sending, else re-process).

    Example: `denoise-node retry 1.2.826.0.1.3680043.8.498.1 -c /etc/denoise-node/denoise-node.toml`
    """
    from dicom_denoise_node.store.catalog import Catalog

    settings = load_or_exit(config)
    catalog = Catalog(settings.catalog_url)
    try:
        state = catalog.recovery.retry(series_uid)
    except (KeyError, ValueError) as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from exc
    finally:
        catalog.close()
    out.print(f"series {series_uid} re-queued: state={state}")


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
    settings = load_or_exit(config)
    catalog = Catalog(settings.catalog_url)
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
        console.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from exc
    finally:
        catalog.close()
