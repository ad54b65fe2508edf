"""② Series completion and routing: a series is COMPLETE once no instance arrived for its quiet period, and it is
denoised only if a routing rule (routing.py) matches it; otherwise it ends SKIPPED with the reason.

DICOM has no "end of series" message, so, like every router, the node waits for a quiet period. Each decision is
an atomic claim in the catalog, run as one APScheduler job with max_instances=1:

1. a series seen for the first time is routed by its first instance, which sets its rule's quiet period;
2. a quiet series becomes COMPLETE;
3. a complete series no rule matched yet is routed by all its instances (a localizer can arrive first); if none
   matches it becomes SKIPPED.
"""

from __future__ import annotations

import logging

from dicom_denoise_node.complete.routing import classify_series
from dicom_denoise_node.config import Settings
from dicom_denoise_node.store.catalog import Catalog

log = logging.getLogger(__name__)


def route_and_complete(catalog: Catalog, settings: Settings) -> list[str]:
    """One pass of the job: route the series not looked at yet, then close those quiet for their rule's period
    (RECEIVING → COMPLETE, or SKIPPED when no rule matched). Returns the series that just became COMPLETE."""
    rules = settings.active_rules
    for series_id, uid in catalog.completion.unrouted_series():
        first = catalog.completion.instance_refs(series_id, limit=1)
        match = classify_series(rules, first)
        quiet = match.rule.quiet_period_s if match.rule is not None else None
        catalog.completion.set_route(series_id, match.rule.name if match.rule is not None else "", quiet)
        # The reasons quote header values (SeriesDescription, ProtocolName): DEBUG only, never INFO (PHI in logs).
        log.info(
            "series %s state=RECEIVING from %s: %s",
            uid,
            first[0][1] if first else "?",
            f"rule {match.rule.name}" if match.rule is not None else "no rule matches yet",
        )
        if match.rule is None:
            log.debug("series %s: %s", uid, match.explain())
    default_quiet = settings.series.quiet_period_s
    done: list[str] = []
    for series_id, uid, rule in catalog.completion.complete_quiet_series(default_quiet, require_route=True):
        if not rule:
            match = classify_series(rules, catalog.completion.instance_refs(series_id))
            if match.rule is None:
                reason = f"no routing rule matched: {match.explain()}"
                if catalog.completion.skip(series_id, reason):
                    log.info("series %s state=SKIPPED: no routing rule matched (why: `denoise-node status`)", uid)
                    log.debug("series %s: %s", uid, reason)
                continue
            rule = match.rule.name
            catalog.completion.set_route(series_id, rule)
        log.info("series %s state=COMPLETE (rule %s)", uid, rule)
        done.append(uid)
    return done
