"""The status page at ``/`` for admins: health, the queue, series per state, what is being denoised now and how far,
failures with their reasons, the last quality reports and the last notifications. Read-only.

Rendered from a Jinja2 template (templates/status.html) with autoescaping on, so a reason or a description that
holds markup is shown as text. Patient names and IDs appear only with ``[http] show_patient_data = true``: the
catalog keeps the PatientID, the name is read from one received instance's header, and neither is even looked up
otherwise. The page refreshes itself every REFRESH_S seconds and runs no script.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from jinja2 import Environment, PackageLoader, StrictUndefined
from pydicom import dcmread

from dicom_denoise_node import __version__
from dicom_denoise_node.config import Settings
from dicom_denoise_node.ops.health import Health
from dicom_denoise_node.store.catalog import Catalog, SeriesState

log = logging.getLogger(__name__)

REFRESH_S = 10
ROWS = 50  # series and failures shown
REPORTS = 10  # quality reports and notifications shown


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _hu(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def patient_name(path: str | None) -> str:
    """The PatientName of a received instance's header ('' when its file is gone or unreadable)."""
    if path is None:
        return ""
    try:
        return str(dcmread(path, stop_before_pixels=True, specific_tags=["PatientName"]).get("PatientName", ""))
    except Exception as exc:  # a purged or damaged file: the page still renders
        log.debug("no patient name from %s: %s", path, exc)
        return ""


class StatusPage:
    """Gathers the page's figures from the catalog and renders them."""

    def __init__(self, catalog: Catalog, health: Callable[[], Health], settings: Settings, node_id: str) -> None:
        self.catalog, self.health, self.settings, self.node_id = catalog, health, settings, node_id
        self.env = Environment(
            loader=PackageLoader("dicom_denoise_node.ops", "templates"), autoescape=True, undefined=StrictUndefined
        )
        self.env.filters["when"] = _when
        self.env.filters["hu"] = _hu

    def context(self) -> dict[str, object]:
        views = self.catalog.views
        series = views.series_overview(limit=ROWS)
        failures = views.failed_series(limit=ROWS)
        reports = self.catalog.quality.latest(limit=REPORTS)
        patients: dict[str, tuple[str, str]] = {}
        if self.settings.http.show_patient_data:
            uids = {str(r["series_uid"]) for r in [*series, *failures, *reports]}
            patients = {uid: (pid, patient_name(path)) for uid, (pid, path) in views.patients_of(sorted(uids)).items()}
        return {
            "node": self.settings.node.ae_title,
            "node_id": self.node_id,
            "role": self.settings.node.role,
            "version": __version__,
            "now": datetime.now(UTC),
            "refresh_s": REFRESH_S,
            "health": self.health(),
            "counts": views.state_counts(),
            "queue": views.pending_series(),
            "series": series,
            "processing": [r for r in series if r["state"] == SeriesState.PROCESSING],
            "failures": failures,
            "reports": reports,
            "notifications": self.catalog.notifications.rows(limit=REPORTS),
            "notify_urls": len(self.settings.notify.webhook_url),
            "show_patients": self.settings.http.show_patient_data,
            "patients": patients,
        }

    def render(self) -> str:
        return self.env.get_template("status.html").render(**self.context())
