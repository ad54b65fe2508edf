"""The "notify" job: failures that reach someone. Each pass records the new events (notify_events.py) and POSTs
every due notification as JSON to each ``[notify] webhook_url`` through httpx.

A POST answered 2xx counts as delivered; anything else (a status, a timeout, a refused connection) is retried
after ``backoff_s``, doubling up to ``backoff_max_s``, only to the URLs that did not take it, until
``max_attempts``, then given up with an error in the log. Attempts, the next one's time and who has it live in the
catalog, so a restart neither loses nor repeats a notification; a node stopped in the middle of a POST sends it
again once its claim runs out (at least once: the ``X-Denoise-Notification`` header names each notification for a
receiver that deduplicates).

The job runs on its own executor (pipeline.py): a slow or dead receiver never delays receiving, processing or
sending. The URLs are never logged whole (a chat webhook's path is its secret), only their scheme and host.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from datetime import timedelta
from urllib.parse import urlsplit

import httpx

from dicom_denoise_node import __version__
from dicom_denoise_node.config import Settings
from dicom_denoise_node.ops.notify_events import record_new_events
from dicom_denoise_node.store.catalog import Catalog, utcnow
from dicom_denoise_node.store.catalog.notifications import Due
from dicom_denoise_node.store.disk import DiskSpace

log = logging.getLogger(__name__)

BATCH = 50  # notifications claimed per pass; the rest wait for the next pass


def url_id(url: str) -> str:
    """What the catalog records of a URL that acknowledged a notification: a hash, never the URL (its secret)."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def shown_url(url: str) -> str:
    """A URL as logs may show it: scheme, host and port only."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


class NotifyJob:
    """One pass: record new events, then deliver what is due (``run``); ``close`` at the node's stop."""

    def __init__(
        self, catalog: Catalog, settings: Settings, disk: DiskSpace, node_id: str, stop: threading.Event
    ) -> None:
        self.catalog, self.settings, self.disk, self.node_id, self.stop = catalog, settings, disk, node_id, stop
        notify = settings.notify
        # httpx logs each request's whole URL at INFO, and a webhook URL's path is often its secret.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        headers = {"User-Agent": f"dicom-denoise-node/{__version__}", **notify.headers}
        self.client = httpx.Client(timeout=notify.timeout_s, headers=headers, follow_redirects=False)

    def run(self) -> None:
        record_new_events(self.catalog, self.settings, self.disk, self.node_id)
        self.deliver_due()

    def close(self) -> None:
        self.client.close()

    def deliver_due(self) -> int:
        """POST every due notification (up to BATCH); returns how many were delivered to every URL."""
        notify = self.settings.notify
        lease_s = notify.timeout_s * len(notify.webhook_url) + 30  # how long another pass keeps off this one
        delivered = 0
        for due in self.catalog.notifications.claim_due(lease_s, limit=BATCH):
            if self.stop.is_set():
                break  # the claims left run out and the next start sends them
            delivered += self.deliver(due)
        return delivered

    def deliver(self, due: Due) -> bool:
        """One attempt of one notification to each URL that does not have it yet."""
        notify = self.settings.notify
        done, errors = set(due.delivered_to), []
        for url in notify.webhook_url:
            if url_id(url) in done:
                continue
            try:
                response = self.client.post(url, json=due.payload, headers={"X-Denoise-Notification": due.key})
                response.raise_for_status()
            except Exception as exc:  # httpx.HTTPError, or anything a broken receiver provokes
                errors.append(f"{shown_url(url)}: {type(exc).__name__}: {exc}".replace(url, shown_url(url)))
                continue
            done.add(url_id(url))
        if not errors:
            self.catalog.notifications.delivered(due, done)
            log.info("notification %s sent (attempt %d)", due.key, due.attempts + 1)
            return True
        attempts = due.attempts + 1
        error = "; ".join(errors)
        if attempts >= notify.max_attempts:
            self.catalog.notifications.attempt_failed(due, done, error, None)
            log.error("notification %s given up after %d attempts: %s", due.key, attempts, error)
            return False
        delay = min(notify.backoff_max_s, notify.backoff_s * 2 ** (attempts - 1))
        self.catalog.notifications.attempt_failed(due, done, error, utcnow() + timedelta(seconds=delay))
        log.warning(
            "notification %s: attempt %d/%d failed (%s); next in %.0f s",
            due.key, attempts, notify.max_attempts, error, delay,
        )  # fmt: skip
        return False
