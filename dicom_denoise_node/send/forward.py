"""④b Passing originals on: the "forward" job sends received series, as they came, to the destinations of their
rule's ``forward_originals`` (and the dose reports the SCP accepted for that to those of every rule), so that a
PACS whose only sender is this node still gets the low-dose series and its dose report.

Independent of denoising (a series is forwarded once complete, while or whether it is denoised), through the same
senders as the derived series (scu.py for DIMSE, stow.py for STOW-RS) with the same per-instance ledger: a retry
sends only what a destination has not confirmed. Attempts back off like sends ([send] backoff_s, backoff_max_s) but
are never given up, since the originals may be the destination's only copy: from [send] max_attempts on, each
failure is logged as an error. The catalog side is store/catalog/forwards.py.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from dicom_denoise_node.config import FORWARD_ONLY_SOP_CLASSES, Destination, Settings
from dicom_denoise_node.send.scu import SendError, send_files
from dicom_denoise_node.send.stow import stow_files
from dicom_denoise_node.store.catalog import Catalog, ForwardClaim

log = logging.getLogger(__name__)

LEDGER_BATCH = 16  # confirmations written per commit, as for derived series (deliver.py)


def _send(files: list[Path], dest: Destination, settings: Settings, confirmed: Callable[[str], None]) -> int:
    timeout_s = dest.timeout_s or settings.send.timeout_s
    if dest.kind == "stow-rs":
        return stow_files(files, dest, timeout_s, confirmed)
    # Originals are sent whole: a refused dose report is a failure, not an optional part (optional_classes).
    return send_files(files, dest, settings.node.ae_title, timeout_s, confirmed, optional_classes=())


def forward_claim(claim: ForwardClaim, catalog: Catalog, settings: Settings, destinations: list[Destination]) -> None:
    """Send the claimed series' originals to every destination that has not confirmed them; record the outcome."""
    originals = catalog.forwards.originals(claim.series_id)
    errors: list[str] = []
    for dest in destinations:
        confirmed = catalog.forwards.confirmed(claim.series_id, dest.key)
        files = [Path(path) for uid, path in originals if uid not in confirmed]
        pending: list[str] = []

        def record(sop_uid: str, dest: Destination = dest, pending: list[str] = pending) -> None:
            pending.append(sop_uid)
            if len(pending) >= LEDGER_BATCH:
                catalog.forwards.record_confirmed(claim, dest.key, pending)
                pending.clear()

        try:
            n = _send(files, dest, settings, record)
        except (SendError, OSError) as exc:
            errors.append(str(exc))
            continue
        except Exception as exc:  # an abort between responses, a pynetdicom error: an attempt all the same
            log.exception("series %s: passing the originals on to %s failed", claim.series_uid, dest.key)
            errors.append(f"{dest.key}: {type(exc).__name__}: {exc}")
            continue
        finally:
            if pending:
                catalog.forwards.record_confirmed(claim, dest.key, pending)
        if n:
            log.info("series %s: %d originals passed on to %s", claim.series_uid, n, dest.key)
    if not errors:
        if not catalog.forwards.succeeded(claim):
            log.warning("series %s: originals passed on, but the lease was lost to another node", claim.series_uid)
        return
    cfg = settings.send
    retry_at = catalog.forwards.failed(claim, "; ".join(errors), cfg.backoff_s, cfg.backoff_max_s)
    attempt = claim.attempts + 1
    level = logging.ERROR if attempt >= cfg.max_attempts else logging.WARNING
    log.log(level, "series %s: passing the originals on failed (attempt %d; %s); next try at %s", claim.series_uid,
            attempt, "; ".join(errors), f"{retry_at:%H:%M:%S} UTC" if retry_at else "another node's")  # fmt: skip


class ForwardJob:
    """One pass of the "forward" job: claim series whose originals are due somewhere and pass them on, until none
    is left or the node stops. ``originals_for`` is routing's answer to "where do a series' originals go"
    (complete/routing.py), handed in by the wiring."""

    def __init__(
        self,
        catalog: Catalog,
        settings: Settings,
        originals_for: Callable[[str | None], list[Destination]],
        stop: threading.Event,
    ) -> None:
        self.catalog, self.settings, self.originals_for, self.stop = catalog, settings, originals_for, stop
        self.rules = [rule.name for rule in settings.active_rules if rule.forward_originals]

    def run(self) -> None:
        if not self.rules:
            return
        while not self.stop.is_set():
            claim = self.catalog.forwards.claim(self.rules, FORWARD_ONLY_SOP_CLASSES, self.settings.send.lease_s)
            if claim is None:
                return
            forward_claim(claim, self.catalog, self.settings, self.originals_for(claim.rule))
