"""④ One send attempt of a claimed DERIVED series: every destination that has not acknowledged it yet, then SENT,
or the attempt counted (backoff, FAILED after max_attempts)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from dicom_denoise_node.config import Settings
from dicom_denoise_node.ops.metrics import NodeMetrics
from dicom_denoise_node.send.scu import SendError, send_files
from dicom_denoise_node.store.catalog import Catalog, Claim

log = logging.getLogger(__name__)


def deliver_claim(claim: Claim, catalog: Catalog, settings: Settings, metrics: NodeMetrics) -> None:
    """Send a DERIVED series to every destination that has not acknowledged it yet."""
    files = [Path(d.path) for d in catalog.derived_instances(claim.series_id)]
    done = catalog.delivered_to(claim)
    errors = []
    for dest in settings.destinations_for(catalog.series_rule(claim.series_id)):
        if dest.key in done:
            continue
        t0 = time.monotonic()
        try:
            n = send_files(files, dest, settings.node.ae_title, settings.send.timeout_s)
        except (SendError, OSError) as exc:
            errors.append(str(exc))
            metrics.send_failures.labels(dest.key).inc()
            continue
        except Exception as exc:  # anything else (an abort between responses, a pynetdicom error) is an attempt too
            log.exception("series %s: sending to %s failed", claim.series_uid, dest.key)
            errors.append(f"{dest.key}: {type(exc).__name__}: {exc}")
            metrics.send_failures.labels(dest.key).inc()
            continue
        catalog.record_delivery(claim, dest.key)
        metrics.instances_sent.labels(dest.key).inc(n)
        seconds = time.monotonic() - t0
        log.info("series %s: %d instances sent to %s in %.2f s", claim.series_uid, n, dest.key, seconds)
    if errors:
        cfg = settings.send
        outcome = catalog.send_failed(claim, "; ".join(errors), cfg.max_attempts, cfg.backoff_s, cfg.backoff_max_s)
        log.warning(
            "series %s send attempt %d/%d failed (%s); state=%s",
            claim.series_uid,
            claim.attempts + 1,
            cfg.max_attempts,
            "; ".join(errors),
            outcome,
        )
        return
    if catalog.send_succeeded(claim):
        log.info("series %s state=SENT", claim.series_uid)
