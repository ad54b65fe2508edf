"""② Series completion: a series is COMPLETE once no instance arrived for quiet_period_s.

DICOM has no "end of series" message, so, like every router, the node waits for a quiet period. The decision is
an atomic claim in the catalog (RECEIVING → COMPLETE), run as an APScheduler job with max_instances=1.
"""

from __future__ import annotations

import logging

from dicom_denoise_node.catalog import Catalog

log = logging.getLogger(__name__)


def mark_complete(catalog: Catalog, quiet_period_s: float) -> list[str]:
    """One pass of the job: returns the series that just became COMPLETE."""
    done = catalog.mark_complete(quiet_period_s)
    for uid in done:
        log.info("series %s state=COMPLETE (quiet for %.1f s)", uid, quiet_period_s)
    return done
