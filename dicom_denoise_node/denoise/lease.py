"""The processing claim's lease, kept alive on a thread while the worker denoises.

With several workers on one catalog, a worker that dies must not hold its series forever: its claim carries a
lease (``[series] claim_lease_s``) that this keeper renews every quarter lease. When the node stops, or a renewal
finds the claim gone (the lease ran out while this worker stalled, and another worker took the series over), the
keeper sets ``abandon``; the denoiser checks it between slices and stops.
"""

from __future__ import annotations

import logging
import threading
import time

from dicom_denoise_node.store.catalog import Catalog, Claim

log = logging.getLogger(__name__)


class ClaimLease:
    """``with ClaimLease(catalog, claim, lease_s, node_stop) as lease:`` … ``lease.abandon`` … ``lease.lost``."""

    def __init__(self, catalog: Catalog, claim: Claim, lease_s: float, node_stop: threading.Event) -> None:
        self.catalog, self.claim, self.lease_s, self.node_stop = catalog, claim, lease_s, node_stop
        self.abandon = threading.Event()  # the denoiser's stop signal: node stopping, or claim lost
        self.lost = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._keep, name=f"lease-{claim.series_id}", daemon=True)

    def __enter__(self) -> ClaimLease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _keep(self) -> None:
        interval = self.lease_s / 4
        renewed = time.monotonic()
        while not self._done.wait(min(0.5, interval)):
            if self.node_stop.is_set():
                self.abandon.set()
            if time.monotonic() - renewed < interval:
                continue
            try:
                held = self.catalog.queue.renew_claim(self.claim, self.lease_s)
            except Exception:  # the catalog is unreachable: keep trying until the lease itself runs out
                log.exception("series %s: could not renew the processing claim", self.claim.series_uid)
                continue
            renewed = time.monotonic()
            if not held:
                log.warning("series %s: the processing claim was taken over (its lease ran out); stopping",
                            self.claim.series_uid)  # fmt: skip
                self.lost = True
                self.abandon.set()
                return
