"""`denoise-node status`: the node's health, its queue and its series, as tables for a person or one JSON object
for a script (``--json``), with an exit code a monitor can act on (docs/install.md):

    0 healthy   3 the node does not answer   4 it answers unhealthy   5 series are FAILED
    6 the catalog is missing or at another schema revision   2 a config error

When several apply, the first of 6, 3, 4, 5 is the exit code (the JSON lists them all under ``problems``). With
``[http] enabled = false`` the node's health cannot be read: it is reported as unknown and sets no code.
The catalog is opened read-only: `status` never creates, migrates or writes it.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from dicom_denoise_node.cli.options import (
    EXIT_CATALOG,
    EXIT_FAILED_SERIES,
    EXIT_UNHEALTHY,
    EXIT_UNREACHABLE,
    ConfigOption,
    config_path,
    console,
    load_or_exit,
    out,
)
from dicom_denoise_node.config import Settings

if TYPE_CHECKING:
    from dicom_denoise_node.store.catalog import ReadOnlyCatalog

JSON_SCHEMA = 1  # bumped when a key of `status --json` changes meaning or goes; new keys do not bump it


@dataclass
class NodeHealth:
    """The running node's /healthz answer: ``reachable`` None when it cannot be asked ([http] disabled)."""

    url: str | None
    reachable: bool | None
    status: str | None = None  # "ok" or "unhealthy", as /healthz says
    checks: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def node_health(settings: Settings) -> NodeHealth:
    """Ask the node's HTTP server (/healthz stays open when the rest wants a token: ops/http_auth.py)."""
    import urllib.error
    import urllib.request

    if not settings.http.enabled:
        return NodeHealth(None, None, error="[http] is disabled: health is only visible in the log")
    wildcard = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}
    host = wildcard.get(settings.http.host, settings.http.host)
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{settings.http.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            report = dict(json.load(response))
    except urllib.error.HTTPError as exc:  # 503 carries the report too
        try:
            report = dict(json.load(exc))
        except ValueError:
            return NodeHealth(url, False, error=f"{url} answered HTTP {exc.code} without a health report")
    except (OSError, ValueError) as exc:
        return NodeHealth(url, False, error=f"node not reachable at {url} ({exc}): is it running?")
    return NodeHealth(url, True, str(report.get("status")), dict(report.get("checks", {})))


def status(
    config: ConfigOption = None,
    limit: Annotated[int, typer.Option(help="Number of series (or associations) to show, newest first.")] = 50,
    associations: Annotated[
        bool, typer.Option("--associations", help="Show the association audit instead of the series.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object on stdout (keys in docs/install.md), for scripts.")
    ] = False,
) -> None:
    """Show the node's health, its queue and the series in the catalog (or the association audit).

    Exit code: 0 healthy, 3 node not reachable, 4 node unhealthy, 5 series FAILED, 6 catalog missing or at another
    schema revision (the first that applies, in the order 6, 3, 4, 5). Reads only: never creates a catalog.
    Example: `denoise-node status -c /etc/denoise-node/denoise-node.toml --json`
    """
    from dicom_denoise_node.store.catalog import open_readonly
    from dicom_denoise_node.store.migrations import SchemaMismatch

    settings = load_or_exit(config)
    health = node_health(settings)
    path = config_path(config)
    report: dict[str, Any] = {
        "schema": JSON_SCHEMA,
        "config": str(path) if path else None,
        "catalog": {"url": settings.catalog_url_shown, "error": None},
        "node": {
            "url": health.url,
            "reachable": health.reachable,
            "status": health.status,
            "checks": health.checks,
            "error": health.error,
        },
    }
    try:
        catalog = open_readonly(settings.catalog_url, require_schema=True)
    except SchemaMismatch as exc:
        report["catalog"]["error"] = str(exc)
    else:
        try:
            report.update(_catalog_part(catalog, settings, limit, associations))
        finally:
            catalog.close()
    report["problems"], code = _problems(report)
    report["exit_code"] = code
    if as_json:
        json.dump(report, sys.stdout, indent=2, default=_json_value)
        sys.stdout.write("\n")
    else:
        _print(report, health, associations)
    raise typer.Exit(code)


def _catalog_part(catalog: ReadOnlyCatalog, settings: Settings, limit: int, associations: bool) -> dict[str, Any]:
    data_dir = settings.node.data_dir
    part: dict[str, Any] = {
        "series_counts": catalog.views.state_counts(),
        "queue": catalog.views.pending_series(),
        "disk": {
            "path": str(data_dir),
            "free_mb": round(shutil.disk_usage(data_dir).free / 2**20, 1) if data_dir.exists() else None,
        },
    }
    if associations:
        from dicom_denoise_node.receive.audit import association_rows

        part["associations"] = association_rows(catalog, limit)
    else:
        part["series"] = catalog.views.series_overview(limit)
    return part


def _problems(report: dict[str, Any]) -> tuple[list[str], int]:
    """What is wrong, and the exit code: the first of catalog (6), unreachable (3), unhealthy (4), FAILED (5)."""
    found: list[tuple[int, str]] = []
    if "series_counts" not in report:
        found.append((EXIT_CATALOG, f"catalog: {report['catalog']['error']}"))
    node = report["node"]
    if node["reachable"] is False:
        found.append((EXIT_UNREACHABLE, f"node: {node['error']}"))
    elif node["reachable"] and node["status"] != "ok":
        failing = ", ".join(name for name, check in node["checks"].items() if not check.get("ok")) or "?"
        found.append((EXIT_UNHEALTHY, f"node: {node['status']} ({failing})"))
    failed = report.get("series_counts", {}).get("FAILED", 0)
    if failed:
        found.append((EXIT_FAILED_SERIES, f"series: {failed} FAILED"))
    return [text for _, text in found], (found[0][0] if found else 0)


def _json_value(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _print(report: dict[str, Any], health: NodeHealth, associations: bool) -> None:
    if health.reachable:
        checks = Table(title=f"health: {health.status}")
        for col in ("check", "ok", "detail"):
            checks.add_column(col)
        for name, check in health.checks.items():
            checks.add_row(name, "yes" if check["ok"] else "[red]NO[/]", escape(str(check["detail"])))
        out.print(checks)
    else:
        out.print(f"health: {escape(str(health.error))}")
    if report["catalog"]["error"]:
        console.print(f"[red]{escape(report['catalog']['error'])}[/]")
        return
    disk = report["disk"]
    free = "n/a" if disk["free_mb"] is None else f"{disk['free_mb']:.0f} MiB"
    out.print(
        "series: "
        + ", ".join(f"{k} {v}" for k, v in report["series_counts"].items())
        + f" · queue {report['queue']} · free under {escape(disk['path'])}: {free}"
    )
    if associations:
        _print_associations(report["associations"])
    else:
        _print_series(report["series"], report["catalog"]["url"])


def _print_series(rows: list[dict[str, object]], where: str) -> None:
    table = Table(title=f"series in {escape(where)}")
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
            started.strftime("%Y-%m-%d %H:%M:%S") if isinstance(started, datetime) else str(started),
            escape(str(r["calling_aet"])),
            escape(str(r["called_aet"])),
            f"{r['address']}:{r['port']}",
            ("accepted, " + str(r["outcome"] or "open")) if r["accepted"] else "[red]rejected[/]",
            str(r["instances"]),
            str(r["failures"]),
            escape(str(r["reason"] or "")),
        )
    out.print(table)
