"""④ The sender: the "send" job claims due DERIVED series one after another under ``[send] lease_s``
(:class:`SendJob`); one send attempt of a claimed series goes to every destination that has not acknowledged it yet,
then SENT, or the attempt counted (backoff, FAILED after max_attempts) (:func:`deliver_claim`).

The one place of the series-level logic (ledger, skip what is confirmed, record_delivery) for every kind of
destination: the senders (scu.py for DIMSE, stow.py for STOW-RS) only send files and report each confirmed instance.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from dicom_denoise_node.config import Destination, Settings
from dicom_denoise_node.ops.metrics import NodeMetrics
from dicom_denoise_node.send.scu import SendError, send_files
from dicom_denoise_node.send.stow import stow_files
from dicom_denoise_node.store.catalog import Catalog, Claim, utcnow

log = logging.getLogger(__name__)


LEDGER_BATCH = 16  # confirmations written per catalog commit: a crash re-sends at most this many (the PACS dedups)


class _Ledger:
    """Buffers one destination's confirmations and writes them in batches (one commit per instance would cost a
    synchronous SQLite commit on the send path)."""

    def __init__(self, catalog: Catalog, claim: Claim, destination: str) -> None:
        self.catalog, self.claim, self.destination = catalog, claim, destination
        self.pending: list[str] = []

    def confirmed(self, sop_uid: str) -> None:
        self.pending.append(sop_uid)
        if len(self.pending) >= LEDGER_BATCH:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.catalog.deliveries.record_instance_deliveries(self.claim, self.destination, self.pending)
            self.pending = []


def _send(files: list[Path], dest: Destination, settings: Settings, confirmed: Callable[[str], None]) -> int:
    timeout_s = dest.timeout_s or settings.send.timeout_s
    if dest.kind == "stow-rs":
        return stow_files(files, dest, timeout_s, confirmed)
    return send_files(files, dest, settings.node.ae_title, timeout_s, confirmed)


def deliver_claim(
    claim: Claim, catalog: Catalog, settings: Settings, metrics: NodeMetrics, destinations: list[Destination]
) -> None:
    """Send a DERIVED series to every one of its ``destinations`` (routing's choice) that has not acknowledged it
    yet; to a destination that failed midway, only the instances it has not confirmed (the per-instance ledger)."""
    derived = catalog.deliveries.derived_instances(claim.series_id)
    done = catalog.deliveries.delivered_to(claim)
    errors = []
    for dest in destinations:
        if dest.key in done:
            continue
        confirmed = catalog.deliveries.confirmed_instances(claim, dest.key)
        files = [Path(d.path) for d in derived if d.sop_uid not in confirmed]
        if confirmed:
            log.info("series %s: %s confirmed %d instances earlier; sending %d", claim.series_uid, dest.key,
                     len(confirmed), len(files))  # fmt: skip
        ledger = _Ledger(catalog, claim, dest.key)
        t0 = time.monotonic()
        try:
            n = _send(files, dest, settings, ledger.confirmed)
        except (SendError, OSError) as exc:
            ledger.flush()
            errors.append(str(exc))
            metrics.send_failures.labels(dest.key).inc()
            continue
        except Exception as exc:  # anything else (an abort between responses, a pynetdicom error) is an attempt too
            ledger.flush()
            log.exception("series %s: sending to %s failed", claim.series_uid, dest.key)
            errors.append(f"{dest.key}: {type(exc).__name__}: {exc}")
            metrics.send_failures.labels(dest.key).inc()
            continue
        ledger.flush()
        catalog.deliveries.record_delivery(claim, dest.key)
        metrics.instances_sent.labels(dest.key).inc(n)
        seconds = time.monotonic() - t0
        log.info("series %s: %d instances sent to %s in %.2f s", claim.series_uid, n, dest.key, seconds)
    if errors:
        cfg = settings.send
        outcome = catalog.deliveries.send_failed(
            claim, "; ".join(errors), cfg.max_attempts, cfg.backoff_s, cfg.backoff_max_s
        )
        if outcome is None:
            log.warning("series %s: send lease lost to another node; its failure (%s) not recorded", claim.series_uid,
                        "; ".join(errors))  # fmt: skip
            return
        log.warning(
            "series %s send attempt %d/%d failed (%s); state=%s",
            claim.series_uid,
            claim.attempts + 1,
            cfg.max_attempts,
            "; ".join(errors),
            outcome,
        )
        return
    if catalog.deliveries.send_succeeded(claim):
        received = catalog.views.last_received_at(claim.series_id)
        if received is not None:
            metrics.series_latency.observe(max(0.0, (utcnow() - received).total_seconds()))
        log.info("series %s state=SENT", claim.series_uid)
    else:
        log.warning("series %s: sent, but the send lease was lost to another node, which records the outcome",
                    claim.series_uid)  # fmt: skip


class SendJob:
    """One pass of the "send" job: claim due DERIVED series and send each, until none is left or the node stops.

    ``destinations_for`` is routing's answer to "where does a series of this rule go" (complete/routing.py), handed
    in by the wiring. Without any destination configured, derived series wait in DERIVED."""

    def __init__(
        self,
        catalog: Catalog,
        settings: Settings,
        metrics: NodeMetrics,
        destinations_for: Callable[[str | None], list[Destination]],
        stop: threading.Event,
    ) -> None:
        self.catalog, self.settings, self.metrics = catalog, settings, metrics
        self.destinations_for, self.stop = destinations_for, stop

    def destinations(self, series_id: int) -> list[Destination]:
        """Where the series goes: its rule's destinations, or, when several rules made derived series of it (a rule
        with fall_through), those of each of them, every destination once."""
        rules = self.catalog.derivations.last_rules(series_id) or [self.catalog.completion.series_rule(series_id)]
        chosen = {d.key: d for rule in rules for d in self.destinations_for(rule)}
        return list(chosen.values())

    def run(self) -> None:
        if not self.settings.destinations:
            return
        while not self.stop.is_set():
            claim = self.catalog.deliveries.claim_for_sending(self.settings.send.lease_s)
            if claim is None:
                return
            deliver_claim(claim, self.catalog, self.settings, self.metrics, self.destinations(claim.series_id))
