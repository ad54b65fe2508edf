"""The one place that wires the stages and the scheduler jobs, in flow order.

    ① C-STORE SCP ──► spool + catalog ──► Success                 (receive/scp.py; store/spool.py, store/catalog/)
    ② quiet period ──► COMPLETE (or SKIPPED: no rule)             (complete/quiet_period.py, job "complete")
    ③ COMPLETE ──► PROCESSING ──► decode, tiles, derive ──► DERIVED (denoise/worker.py, job "process")
    ④ DERIVED ──► C-STORE to each destination ──► SENT / FAILED    (send/deliver.py, job "send")
       SENT ──► spool files purged after retention                  (store/retention.py, job "retention")
    FAILED, guard flags, disk pressure ──► webhook notifications    (ops/notify.py, job "notify", own thread)

Every arrow is a catalog transition, so a restart resumes where the node stopped, and several nodes can share one
catalog (PostgreSQL) and one spool: ``[node] role = "receive"`` runs ① and ②, ``"worker"`` runs ② to ④, ``"all"``
(the default) everything. Claims are leased (store/catalog/queue.py), so any worker finishes what a dead one left.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from pynetdicom.transport import ThreadedAssociationServer

from dicom_denoise_node import pynetdicom_patches
from dicom_denoise_node.complete import quiet_period, routing
from dicom_denoise_node.config import ConfigError, Settings, describe, env_overrides
from dicom_denoise_node.denoise.decode_process import DecoderProcess
from dicom_denoise_node.denoise.inference import select_device
from dicom_denoise_node.denoise.rule_denoisers import RuleDenoisers, load_rule_models
from dicom_denoise_node.denoise.series import SeriesDenoiser
from dicom_denoise_node.denoise.worker import ProcessJob
from dicom_denoise_node.model.registry import load_model, resolve_model_path
from dicom_denoise_node.ops.health import Health, Heartbeat, node_checks
from dicom_denoise_node.ops.http_status import StatusServer
from dicom_denoise_node.ops.metrics import NodeMetrics
from dicom_denoise_node.ops.notify import NotifyJob
from dicom_denoise_node.ops.status_page import StatusPage
from dicom_denoise_node.receive.admission import Admission
from dicom_denoise_node.receive.audit import AssociationAudit, association_rows
from dicom_denoise_node.receive.scp import start_scp
from dicom_denoise_node.send.deliver import SendJob
from dicom_denoise_node.send.forward import ForwardJob
from dicom_denoise_node.store.catalog import Catalog
from dicom_denoise_node.store.disk import MIB, DiskSpace
from dicom_denoise_node.store.lock import DataDirLock
from dicom_denoise_node.store.retention import purge_sent
from dicom_denoise_node.store.spool import Spool
from dicom_denoise_node.store.spool_check import check_spool

log = logging.getLogger(__name__)


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


def load_rule_denoisers(settings: Settings, default: SeriesDenoiser) -> RuleDenoisers:
    """The default denoiser and every model the routing rules name (a ModelError names a rule whose model is
    missing), with routing's answer to "which rules make a derived series of this one"."""
    by_model = load_rule_models(settings, default, str(default.inferer.device), default.decoder)
    return RuleDenoisers(default, by_model, functools.partial(routing.series_rules, settings))


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
        self.denoisers: RuleDenoisers | None = None  # the denoiser and the models rules name, loaded at start
        self.disk = DiskSpace(settings.spool_dir, settings.node.min_free_mb)  # receiving refuses, processing pauses
        self.admission = Admission(
            settings.node,
            settings.spool_dir,
            self.catalog.views.pending_series,
            known_series=lambda uid: self.catalog.views.series_state(uid) is not None,
            disk=self.disk,
        )
        self.metrics = NodeMetrics(self.catalog, lambda: self.disk.free_mb() * MIB)
        self.audit = AssociationAudit(self.catalog, self.metrics)
        self.heartbeat = Heartbeat(max(10.0, 5 * settings.series.poll_interval_s))
        self.server: ThreadedAssociationServer | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.http: StatusServer | None = None
        self.notify: NotifyJob | None = None
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
            self.denoisers = load_rule_denoisers(self.settings, self.denoiser)  # ... or one a rule names
        if self.denoiser is not None:
            info = self.denoiser.info
            self.metrics.set_model(info.name, info.version, str(self.denoiser.inferer.device))
        self.spool.remove_partial_writes()
        for uid in self.catalog.recovery.recover_after_restart():
            log.warning("series %s was interrupted while PROCESSING; state=COMPLETE again", uid)
        self.catalog.forwards.release_own()  # a crash mid-forward: those originals go at once
        check_spool(self.spool, self.catalog)
        if not self.settings.destinations and self.works:
            log.warning("no [[destinations]] configured: derived series will wait in state DERIVED")
        http = self.settings.http
        if http.enabled:
            try:
                self.http = StatusServer(
                    http,
                    self.health,
                    self.metrics.exposition,
                    self.catalog.views.series_overview,
                    lambda limit: association_rows(self.catalog, limit),
                    StatusPage(self.catalog, self.health, self.settings, self.catalog.db.node_id).render,
                )
            except OSError as exc:
                raise ConfigError(f"[http] cannot listen on {http.host}:{http.port}: {exc}") from exc
            self.http.start()
        if self.receives:
            forward_only = self.settings.forward_only_sop_classes  # dose reports, when originals are passed on
            self.server = start_scp(
                self.settings.node, self.spool, self.catalog, self.admission, self.audit, forward_only
            )
        # Notifications have a thread of their own: a slow webhook never holds up the DICOM path's jobs.
        executors = {"default": ThreadPoolExecutor(4), "notify": ThreadPoolExecutor(1)}
        self.scheduler = BackgroundScheduler(executors=executors, timezone="UTC")
        every = self.settings.series.poll_interval_s
        common = dict(trigger="interval", seconds=every, max_instances=1, coalesce=True, misfire_grace_time=None)
        # Completion is an atomic catalog transition: every role runs it, so series complete while any node is up.
        self.scheduler.add_job(self.complete_job, id="complete", **common)
        if self.works:
            assert self.denoisers is not None
            processing = ProcessJob(self.catalog, self.denoisers, self.spool, self.metrics, self.settings, self.disk,
                                    self.stop_event, derived=lambda: self._run_now("send"))  # fmt: skip
            destinations = functools.partial(routing.destinations_for, self.settings)
            sending = SendJob(self.catalog, self.settings, self.metrics, destinations, self.stop_event)
            self.scheduler.add_job(self._claim_loop, args=("process", processing.run), id="process", **common)
            self.scheduler.add_job(self._claim_loop, args=("send", sending.run), id="send", **common)
            originals = functools.partial(routing.originals_destinations_for, self.settings)
            forwarding = ForwardJob(self.catalog, self.settings, originals, self.stop_event)
            self.scheduler.add_job(self._claim_loop, args=("forward", forwarding.run), id="forward", **common)
            retention = dict(common, seconds=self.settings.retention.check_interval_s)
            self.scheduler.add_job(self.retention_job, id="retention", next_run_time=datetime.now(UTC), **retention)
        if self.settings.notify.enabled:
            self.notify = NotifyJob(self.catalog, self.settings, self.disk, self.catalog.db.node_id, self.stop_event)
            notify = dict(common, seconds=self.settings.notify.poll_interval_s, next_run_time=datetime.now(UTC))
            self.scheduler.add_job(self.notify.run, id="notify", executor="notify", **notify)
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
        if self.notify is not None:
            self.notify.close()
        if self.denoisers is not None:
            self.denoisers.close()
        elif self.denoiser is not None:
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
            self.disk.free_mb,
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

    def _claim_loop(self, job_id: str, run: Callable[[], None]) -> None:
        """A stage's claim loop (denoise/worker.py, send/deliver.py), marked as running so that _run_now leaves it."""
        self._running.add(job_id)
        try:
            run()
        finally:
            self._running.discard(job_id)

    def retention_job(self) -> None:
        purge_sent(self.spool, self.catalog, self.settings.retention.sent_days)
