"""Who may associate with the node and when it must say "not now": the admission rules of the C-STORE SCP.

pynetdicom already checks the called AE title, the calling-AE allowlist and the association count while it
negotiates. What it cannot know is kept here and applied from the ``EVT_REQUESTED`` hook (before negotiation,
answered with a proper A-ASSOCIATE-RJ) and per C-STORE:

- a per-AE peer-address allowlist (``[node] allowed_peers``): permanent rejection, calling AE not recognised;
- free space under the data directory below ``min_free_mb``: transient rejection (local limit exceeded) for new
  associations, Out of Resources for stores on open ones, so nothing is half-written on a full disk;
- back-pressure: with ``max_pending_series`` series waiting for the worker, the first instance of a new series
  gets Out of Resources (instances of series already arriving pass); the SCU retries later and the queue never
  grows without bound.

It also builds the TLS context for DICOM TLS.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from dicom_denoise_node.config import ConfigError, NodeSettings, TLSSettings
from dicom_denoise_node.store.disk import DiskSpace

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service user, calling AE title not recognised
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)  # transient, service provider (presentation), local limit exceeded


class Admission:
    """The node's admission rules; cheap enough to run on every association and every store."""

    def __init__(
        self,
        settings: NodeSettings,
        data_dir: Path,
        pending_series: Callable[[], int] | None = None,
        free_bytes: Callable[[Path], int] | None = None,
        known_series: Callable[[str], bool] | None = None,
        disk: DiskSpace | None = None,
    ) -> None:
        self.settings = settings
        self.data_dir = Path(data_dir)
        self._pending_series = pending_series
        self._known_series = known_series
        self._new_series_lock = threading.Lock()
        # The measure the worker's pause shares (store/disk.py); built here when the caller has none.
        self.disk = disk or DiskSpace(self.data_dir, settings.min_free_mb, free_bytes)
        self._networks = {
            ae: [ipaddress.ip_network(n, strict=False) for n in nets] for ae, nets in settings.allowed_peers.items()
        }

    def peer_allowed(self, calling_ae: str, address: str) -> bool:
        """False when the calling AE has an address allowlist that does not contain the peer's address."""
        networks = self._networks.get(calling_ae.strip())
        if networks is None:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in networks)

    def free_mb(self) -> float:
        return self.disk.free_mb()

    def disk_refusal(self) -> str | None:
        """Why the disk is too full for new data, or None."""
        return self.disk.refusal()

    def association_refusal(self, calling_ae: str, address: str) -> tuple[tuple[int, int, int], str] | None:
        """(A-ASSOCIATE-RJ result/source/diagnostic, reason) when a new association must be refused, else None."""
        if not self.peer_allowed(calling_ae, address):
            return REJECT_CALLING_AE, f"calling AE {calling_ae} is not allowed from {address}"
        disk = self.disk_refusal()
        return (REJECT_LOCAL_LIMIT, disk) if disk else None

    @contextlib.contextmanager
    def new_series_gate(self, series_uid: str) -> Iterator[str | None]:
        """Back-pressure per store: yields why the first instance of a *new* series must wait (the queue is
        full), or None. Instances of series already arriving always pass, so a limit never cuts a scanner's
        series in two. First instances of new series are checked and recorded one at a time (the caller stores
        the instance inside the block), so concurrent scanners cannot overshoot the limit."""
        limit = self.settings.max_pending_series
        if not limit or self._pending_series is None or self._known_series is None or self._known_series(series_uid):
            yield None
            return
        with self._new_series_lock:
            waiting = self._pending_series()
            if self._known_series(series_uid) or waiting < limit:
                yield None
            else:
                yield f"{waiting} series waiting for the worker (max_pending_series={limit}); new series later"


def server_tls_context(tls: TLSSettings) -> ssl.SSLContext | None:
    """The SSL context for the listening port (TLS 1.2+), or None when TLS is off. Errors name the file."""
    if not tls.enabled:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.ca_file:
            ctx.load_verify_locations(cafile=tls.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[node.tls] cannot load {tls.cert_file} / {tls.key_file} / {tls.ca_file}: {exc}") from exc
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_NONE
    return ctx
