"""What the node announces (ops/notify.py delivers it): events found in the catalog and on the disk, each recorded
once under its key (store/catalog/notifications.py), so that looking again finds nothing new.

- ``series_failed``: a received series is FAILED. Its key is the UID and the time it failed, so a retry that fails
  again is a new event; the body carries the stage and the reason. A series purged since is not announced.
- ``guard_flagged``: a processing run whose slices the consistency guard flagged, and whose series went on to the
  PACS with them marked (policy "mark"; under "hold" the series is FAILED, and that is its event).
- ``disk_low`` / ``disk_ok``: this node's spool below ``[node] min_free_mb``, and back above it by a margin (a disk
  hovering at the watermark does not page anyone at every poll). Subscribing to ``disk_low`` brings both.

Only what happened within ``[notify] max_age_h`` is announced: notifications turned on for an old catalog, or a
node back after a long stop, do not replay the past. Bodies carry UIDs, never patient names or IDs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from dicom_denoise_node import __version__
from dicom_denoise_node.config import Settings
from dicom_denoise_node.store.catalog import Catalog, utcnow
from dicom_denoise_node.store.disk import DiskSpace

log = logging.getLogger(__name__)

DISK_EVENTS = ("disk_low", "disk_ok")
DISK_OK_MARGIN = 0.05  # back above the watermark by 5 % of it (at least DISK_OK_MIN_MB) before disk_ok
DISK_OK_MIN_MB = 64.0


@dataclass(frozen=True)
class Event:
    """One event to record: its kind, its once-only key and the JSON body receivers get."""

    event: str
    key: str
    body: dict[str, object]
    series_id: int | None = None
    node_id: str = ""


@dataclass(frozen=True)
class Origin:
    """Which node speaks: its AE title and node id, in every body."""

    ae_title: str
    node_id: str

    def body(self, event: str, key: str, at: datetime, text: str, **fields: object) -> dict[str, object]:
        return {
            "event": event,
            "text": f"{self.ae_title}: {text}",
            "occurred_at": at.isoformat(),
            "node": self.ae_title,
            "node_id": self.node_id,
            "notification": key,
            "version": __version__,
            **fields,
        }


def series_failed(catalog: Catalog, origin: Origin, since: datetime) -> list[Event]:
    events = []
    for f in catalog.notifications.failed_since(since):
        key = f"series_failed:{f.series_uid}:{f.failed_at.isoformat()}"
        text = f"series {f.series_uid} FAILED at {f.stage or 'an unknown stage'}: {f.reason}"
        body = origin.body(
            "series_failed", key, f.failed_at, text[:1000],
            series_uid=f.series_uid, study_uid=f.study_uid, stage=f.stage, reason=f.reason, attempts=f.attempts,
            rule=f.rule,
        )  # fmt: skip
        events.append(Event("series_failed", key, body, series_id=f.series_id))
    return events


def guard_flagged(catalog: Catalog, origin: Origin, since: datetime) -> list[Event]:
    events = []
    for run in catalog.quality.latest(limit=500, since=since, flagged_only=True):
        if run["guard_policy"] != "mark":
            continue  # "hold": the series is FAILED at stage guard, announced as series_failed
        at = run["created_at"]
        assert isinstance(at, datetime)
        key = f"guard_flagged:{run['id']}"
        text = (
            f"the consistency guard flagged {run['flagged']} of {run['slices']} slices of series {run['series_uid']}"
            f" (derived series {run['derived_series_uid']}, sent with those slices marked); first: {run['first_flag']}"
        )
        body = origin.body(
            "guard_flagged", key, at, text[:1000],
            series_uid=run["series_uid"], derived_series_uid=run["derived_series_uid"], slices=run["slices"],
            flagged=run["flagged"], first_flag=run["first_flag"], derivation_key=run["derivation_key"],
        )  # fmt: skip
        events.append(Event("guard_flagged", key, body))
    return events


def disk_events(catalog: Catalog, origin: Origin, disk: DiskSpace) -> list[Event]:
    """disk_low when the spool falls below the watermark, disk_ok when it is back above it by the margin; the last
    one recorded for this node says which was announced last (so a restart does not announce it again)."""
    if disk.min_free_mb <= 0:
        return []
    free = disk.free_mb()
    last = catalog.notifications.last_event(DISK_EVENTS, origin.node_id)
    margin = max(DISK_OK_MIN_MB, DISK_OK_MARGIN * disk.min_free_mb)
    if free < disk.min_free_mb and last != "disk_low":
        event = "disk_low"
        text = (
            f"{free:.0f} MiB free under {disk.directory}, below min_free_mb={disk.min_free_mb:g}: new series are "
            "refused (Out of Resources) and processing waits"
        )
    elif free >= disk.min_free_mb + margin and last == "disk_low":
        event = "disk_ok"
        text = f"{free:.0f} MiB free under {disk.directory} again (min_free_mb={disk.min_free_mb:g}): work resumes"
    else:
        return []
    at = utcnow()
    key = f"{event}:{origin.node_id}:{at.isoformat()}"
    body = origin.body(event, key, at, text, free_mb=round(free, 1), min_free_mb=disk.min_free_mb)
    return [Event(event, key, body, node_id=origin.node_id)]


def record_new_events(catalog: Catalog, settings: Settings, disk: DiskSpace, node_id: str) -> list[Event]:
    """Look for events of the subscribed kinds and record those not recorded yet; returns the new ones."""
    wanted = set(settings.notify.events)
    origin = Origin(settings.node.ae_title, node_id)
    since = utcnow() - timedelta(hours=settings.notify.max_age_h)
    found: list[Event] = []
    if "series_failed" in wanted:
        found += series_failed(catalog, origin, since)
    if "guard_flagged" in wanted:
        found += guard_flagged(catalog, origin, since)
    if "disk_low" in wanted:
        found += disk_events(catalog, origin, disk)
    known = catalog.notifications.known([e.key for e in found])
    recorded = []
    for e in found:
        if e.key not in known and catalog.notifications.record(e.event, e.key, e.body, e.series_id, e.node_id):
            log.info("notification %s recorded", e.key)
            recorded.append(e)
    return recorded
