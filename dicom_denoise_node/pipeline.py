"""The one place that wires the stages and the scheduler jobs, in flow order.

    ① C-STORE SCP ──► spool + catalog ──► Success                 (receive/scp.py; store/spool.py, store/catalog/)
    ② quiet period ──► COMPLETE (or SKIPPED: no rule)             (complete/quiet_period.py, job "complete")
    ③ COMPLETE ──► PROCESSING ──► decode, tiles, derive ──► DERIVED (denoise/worker.py, job "process")
    ④ DERIVED ──► C-STORE to each destination ──► SENT / FAILED    (send/deliver.py, job "send")
       SENT ──► spool files purged after retention                  (store/retention.py, job "retention")

Every arrow is a catalog transition, so a restart resumes where the node stopped, and several nodes can share one
catalog (PostgreSQL) and one spool: ``[node] role = "receive"`` runs ① and ②, ``"worker"`` runs ② to ④, ``"all"``
(the default) everything. Claims are leased (store/catalog/queue.py), so any worker finishes what a dead one left.
"""

from __future__ import annotations

import logging
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from pynetdicom.transport import ThreadedAssociationServer

from dicom_denoise_node import pynetdicom_patches
from dicom_denoise_node.complete import quiet_period
from dicom_denoise_node.config import ConfigError, Settings, describe, env_overrides
from dicom_denoise_node.denoise.decode_process import DecoderProcess
from dicom_denoise_node.denoise.inference import select_device
from dicom_denoise_node.denoise.series import SeriesDenoiser
from dicom_denoise_node.denoise.worker import denoise_claim
from dicom_denoise_node.model.registry import load_model, resolve_model_path
from dicom_denoise_node.ops.health import Health, Heartbeat, node_checks
from dicom_denoise_node.ops.http_status import StatusServer
from dicom_denoise_node.ops.metrics import NodeMetrics
from dicom_denoise_node.receive.admission import MIB, Admission
from dicom_denoise_node.receive.audit import AssociationAudit, association_rows
from dicom_denoise_node.receive.scp import start_scp
from dicom_denoise_node.send.deliver import deliver_claim
from dicom_denoise_node.store.catalog import Catalog
from dicom_denoise_node.store.lock import DataDirLock
from dicom_denoise_node.store.retention import purge_sent
from dicom_denoise_node.store.spool import Spool
from dicom_denoise_node.store.spool_check import check_spool

log = logging.getLogger(__name__)

SEND_LEASE_S = 600.0


def load_denoiser(settings: Settings) -> SeriesDenoiser:
    """Load the configured (or bundled) model; raises ModelError with an actionable message."""
    device = select_device(settings.model.device)
    network, info = load_model(resolve_model_path(settings.model.path, settings.model.name), device)
    series = settings.series
    decoder = DecoderProcess(series.decode_timeout_s, series.decode_memory_mb) if series.isolate_decoding else None
    return SeriesDenoiser(
        network,
        info,
        settings.model,
        settings.derive,
        device=str(device),
        guard=settings.guard,
        report=settings.report,
        decoder=decoder,
    )


class Node:
    """The running service: SCP, scheduler jobs and the state they share through the catalog."""

    def __init__(self, settings: Settings, denoiser: SeriesDenoiser | None = None) -> None:
        self.settings = settings
        self.stop_event = threading.Event()
        self.lock = DataDirLock(settings.node.data_dir)
        self.lock.acquire()  # before the catalog is opened (and migrated) or the spool is touched
        try:
            self.spool = Spool(settings.spool_dir)
            self.catalog = Catalog(settings.catalog_url, node_id=settings.node_id)
        except BaseException:
            self.lock.release()
            raise
        self.denoiser = denoiser
        self.admission = Admission(
            settings.node,
            settings.spool_dir,
            self.catalog.views.pending_series,
            known_series=lambda uid: self.catalog.views.series_state(uid) is not None,
        )
        self._disk_low = False
        self.metrics = NodeMetrics(self.catalog, lambda: self.admission.free_mb() * MIB)
        self.audit = AssociationAudit(self.catalog, self.metrics)
        self.heartbeat = Heartbeat(max(10.0, 5 * settings.series.poll_interval_s))
        self.server: ThreadedAssociationServer | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.http: StatusServer | None = None
        self._running: set[str] = set()  # jobs inside their claim loop (see _run_now)

    # ---- life cycle ----------------------------------------------------------------------------------------

    @property
    def receives(self) -> bool:
        return self.settings.node.role in ("all", "receive")

    @property
    def works(self) -> bool:
        return self.settings.node.role in ("all", "worker")

    def start(self) -> None:
        log.info("starting: %s", describe(self.settings))
        pynetdicom_patches.check_version()
        if env_overrides():
            log.info("environment overrides: %s", ", ".join(env_overrides()))
        if self.denoiser is None and self.works:
            self.denoiser = load_denoiser(self.settings)  # refuse to start without a usable model
        if self.denoiser is not None:
            info = self.denoiser.info
            self.metrics.set_model(info.name, info.version, str(self.denoiser.inferer.device))
        self.spool.remove_partial_writes()
        for uid in self.catalog.recovery.recover_after_restart():
            log.warning("series %s was interrupted while PROCESSING; state=COMPLETE again", uid)
        check_spool(self.spool, self.catalog)
        if not self.settings.destinations and self.works:
            log.warning("no [[destinations]] configured: derived series will wait in state DERIVED")
        http = self.settings.http
        if http.enabled:
            try:
                self.http = StatusServer(
                    http.host,
                    http.port,
                    self.health,
                    self.metrics.exposition,
                    self.catalog.views.series_overview,
                    lambda limit: association_rows(self.catalog, limit),
                )
            except OSError as exc:
                raise ConfigError(f"[http] cannot listen on {http.host}:{http.port}: {exc}") from exc
            self.http.start()
        if self.receives:
            self.server = start_scp(self.settings.node, self.spool, self.catalog, self.admission, self.audit)
        self.scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(3)}, timezone="UTC")
        every = self.settings.series.poll_interval_s
        common = dict(trigger="interval", seconds=every, max_instances=1, coalesce=True, misfire_grace_time=None)
        # Completion is an atomic catalog transition: every role runs it, so series complete while any node is up.
        self.scheduler.add_job(self.complete_job, id="complete", **common)
        if self.works:
            self.scheduler.add_job(self.process_job, id="process", **common)
            self.scheduler.add_job(self.send_job, id="send", **common)
            retention = dict(common, seconds=self.settings.retention.check_interval_s)
            self.scheduler.add_job(self.retention_job, id="retention", next_run_time=datetime.now(UTC), **retention)
        self.scheduler.start()
        log.info("node started (role %s, node id %s)", self.settings.node.role, self.catalog.db.node_id)

    def stop(self) -> None:
        log.info("stopping")
        self.stop_event.set()
        if self.server is not None:
            self.server.shutdown()
        if self.http is not None:
            self.http.stop()
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        if self.denoiser is not None:
            self.denoiser.close()
        self.catalog.close()
        self.lock.release()
        log.info("stopped")

    def serve_forever(self) -> None:
        """Run until SIGTERM/SIGINT (systemd stop, Ctrl-C), then stop cleanly."""
        done = threading.Event()

        def _signal(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s received", signal.Signals(signum).name)
            done.set()

        signal.signal(signal.SIGTERM, _signal)
        signal.signal(signal.SIGINT, _signal)
        self.start()
        try:
            done.wait()
        finally:
            self.stop()

    # ---- jobs ----------------------------------------------------------------------------------------------

    def health(self) -> Health:
        """The checks behind /healthz (and `status`)."""

        def listening() -> tuple[bool, str]:
            if self.server is None or self.server.socket.fileno() < 0:
                return False, "SCP not listening"
            host, port = self.server.server_address[:2]
            return True, f"{self.settings.node.ae_title} listening on {host}:{port}"

        def model() -> tuple[str, str, Path, str] | None:
            if self.denoiser is None:
                return None
            info = self.denoiser.info
            return info.name, info.version, info.weights_path, str(self.denoiser.inferer.device)

        return node_checks(
            listening if self.receives else None,
            self.heartbeat,
            lambda: self.scheduler is not None and self.scheduler.running,
            self.catalog.db.write_probe,
            model if self.works else None,
            self.admission.free_mb,
            self.settings.node.min_free_mb,
            self.settings.spool_dir,
        )

    def complete_job(self) -> None:
        self.heartbeat.beat()
        if quiet_period.route_and_complete(self.catalog, self.settings):
            self._run_now("process")

    def _run_now(self, job_id: str) -> None:
        """Start a stage's job now rather than at its next poll, so a series does not wait up to a poll interval
        between stages (bench/e2e.py). A job already running picks the series up in its own loop."""
        if self.scheduler is None or job_id in self._running:
            return
        job = self.scheduler.get_job(job_id)
        if job is not None:
            job.modify(next_run_time=datetime.now(UTC))

    def process_job(self) -> None:
        if not self._disk_has_room():
            return
        self._running.add("process")
        try:
            while not self.stop_event.is_set():
                series = self.settings.series
                claim = self.catalog.queue.claim_for_processing(series.max_attempts, series.claim_lease_s)
                if claim is None:
                    return
                assert self.denoiser is not None
                if denoise_claim(
                    claim,
                    self.catalog,
                    self.denoiser,
                    self.spool,
                    self.metrics,
                    self.settings.guard,
                    self.stop_event,
                    series.claim_lease_s,
                ):
                    self._run_now("send")
        finally:
            self._running.discard("process")

    def retention_job(self) -> None:
        purge_sent(self.spool, self.catalog, self.settings.retention.sent_days)

    def _disk_has_room(self) -> bool:
        """Processing writes derived files: below the free-space watermark it waits (and says so once)."""
        ok = self.admission.disk_ok()
        if not ok and not self._disk_low:
            log.warning(
                "free space %.0f MiB below min_free_mb=%g: processing paused until space returns",
                self.admission.free_mb(),
                self.settings.node.min_free_mb,
            )
        elif ok and self._disk_low:
            log.info("free space %.0f MiB: processing resumes", self.admission.free_mb())
        self._disk_low = not ok
        return ok

    def send_job(self) -> None:
        if not self.settings.destinations:
            return  # derived series wait in DERIVED until a destination is configured
        self._running.add("send")
        try:
            while not self.stop_event.is_set():
                claim = self.catalog.deliveries.claim_for_sending(SEND_LEASE_S)
                if claim is None:
                    return
                deliver_claim(claim, self.catalog, self.settings, self.metrics)
        finally:
            self._running.discard("send")
