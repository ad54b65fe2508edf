"""Retention: remove spool data of delivered (SENT) and unrouted (SKIPPED) series after `[retention] sent_days`;
purge FAILED ones on command.

The series row stays (state, UIDs, timestamps, purged_at) as the audit trail. The order is crash-safe: the series is
tombstoned first (purged_at), then its files go, then its instance and derived rows; a crash in between leaves rows of
a tombstoned series, and the start-up check (spool_check.py) finishes the purge. Rows were once dropped first: a
crash then left files without rows, which the start-up check indexed as received, so the series came back and was
denoised and sent again.

An instance that arrives for a series under purge is refused (Out of Resources, nothing kept) from the tombstone
until the rows are gone, and a series that received one before its tombstone is not purged: no acknowledged file
is ever deleted by a purge (catalog/intake.py, ``SeriesBeingPurged``). Once purged, the series may be sent again.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from dicom_denoise_node.store.catalog import Catalog, SeriesState, utcnow
from dicom_denoise_node.store.spool import Spool

log = logging.getLogger(__name__)


def delete_files(spool: Spool, paths: list[str]) -> int:
    """Delete spool files and the series/study folders they leave empty; returns how many files."""
    removed = 0
    for raw in paths:
        path = Path(raw)
        path.unlink(missing_ok=True)
        removed += 1
        # Remove emptied series/study directories, never the spool roots themselves.
        for parent in path.parents:
            if parent in (spool.incoming, spool.derived, spool.root) or spool.root not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break
    return removed


def purge(spool: Spool, catalog: Catalog, series_id: int, allowed: tuple[SeriesState, ...]) -> int | None:
    """Tombstone, delete the files, drop the rows (the order in the module docstring); returns how many files, or
    None when the series left ``allowed`` before its tombstone (an instance arrived): then nothing is purged."""
    paths = catalog.housekeeping.begin_purge(series_id, allowed)
    if paths is None:
        return None
    files = delete_files(spool, paths)
    catalog.housekeeping.finish_purge(series_id)
    return files


def purge_sent(spool: Spool, catalog: Catalog, sent_days: float) -> list[str]:
    """Delete the spool files of SENT and SKIPPED series older than ``sent_days``; returns their UIDs."""
    purged = []
    finished = (SeriesState.SENT, SeriesState.SKIPPED)
    for series_id, uid in catalog.housekeeping.finished_before(utcnow() - timedelta(days=sent_days)):
        files = purge(spool, catalog, series_id, finished)
        if files is None:
            log.info("retention: series %s received an instance again; not purged", uid)
            continue
        log.info("retention: series %s purged (%d files, finished more than %g days ago)", uid, files, sent_days)
        purged.append(uid)
    return purged


def purge_series(spool: Spool, catalog: Catalog, series_uid: str) -> int:
    """`denoise-node purge`: delete a FAILED (or SENT) series' spool data; returns the number of files."""
    series_id = catalog.housekeeping.series_id(series_uid)
    if series_id is None:
        raise KeyError(f"no series {series_uid} in the catalog")
    state = catalog.views.series_state(series_uid)
    allowed = (SeriesState.FAILED, SeriesState.SENT, SeriesState.SKIPPED)
    if state not in allowed:
        raise ValueError(f"series {series_uid} is {state}; only FAILED, SENT or SKIPPED series can be purged")
    files = purge(spool, catalog, series_id, allowed)
    if files is None:
        raise ValueError(f"series {series_uid} received an instance since; not purged")
    log.info("series %s purged on request (%d files)", series_uid, files)
    return files
