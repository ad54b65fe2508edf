"""The one place that wires the stages and the scheduler jobs, in flow order.

    C-STORE SCP ──► spool + catalog ──► Success                      (receive.py, spool.py, catalog.py)
    quiet period ──► COMPLETE                                         (quiet_period.py, job "complete")
    COMPLETE ──► PROCESSING ──► decode, tiles, derive ──► DERIVED    (process.py, job "process")
    DERIVED ──► C-STORE to each destination ──► SENT / retry / FAILED (send.py, job "send")

Every arrow is a catalog transition, so a restart resumes where the node stopped.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from pynetdicom.transport import ThreadedAssociationServer

from dicom_denoise_node.complete import quiet_period
from dicom_denoise_node.config import ConfigError, Settings, describe, env_overrides
from dicom_denoise_node.denoise.inference import select_device
from dicom_denoise_node.denoise.series import Interrupted, SeriesDenoiser
from dicom_denoise_node.model.registry import load_model, resolve_model_path
from dicom_denoise_node.ops.health import Check, Health, Heartbeat, run_checks
from dicom_denoise_node.ops.http_status import StatusServer
from dicom_denoise_node.ops.metrics import NodeMetrics
from dicom_denoise_node.receive.admission import MIB, Admission
from dicom_denoise_node.receive.audit import AssociationAudit
from dicom_denoise_node.receive.scp import start_scp
from dicom_denoise_node.send.scu import SendError, send_files
from dicom_denoise_node.store.catalog import Catalog, Claim, DerivedRecord, SeriesState
from dicom_denoise_node.store.retention import purge_sent
from dicom_denoise_node.store.spool import Spool
from dicom_denoise_node.store.spool_check import check_spool

log = logging.getLogger(__name__)

SEND_LEASE_S = 600.0


def load_denoiser(settings: Settings) -> SeriesDenoiser:
    """Load the configured (or bundled) model; raises ModelError with an actionable message."""
    device = select_device(settings.model.device)
    network, info = load_model(resolve_model_path(settings.model.path, settings.model.name), device)
    return SeriesDenoiser(
        network, info, settings.model, settings.derive, device=str(device), guard=settings.guard, report=settings.report
    )


class Node:
    """The running service: SCP, scheduler jobs and the state they share through the catalog."""

    def __init__(self, settings: Settings, denoiser: SeriesDenoiser | None = None) -> None:
        self.settings = settings
        self.stop_event = threading.Event()
        self.spool = Spool(settings.node.data_dir)
        self.catalog = Catalog(settings.catalog_url)
        self.denoiser = denoiser
        self.admission = Admission(
            settings.node,
            settings.node.data_dir,
            self.catalog.pending_series,
            known_series=lambda uid: self.catalog.series_state(uid) is not None,
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

    def start(self) -> None:
        log.info("starting: %s", describe(self.settings))
        if env_overrides():
            log.info("environment overrides: %s", ", ".join(env_overrides()))
        if self.denoiser is None:
            self.denoiser = load_denoiser(self.settings)  # refuse to start without a usable model
        self.spool.remove_partial_writes()
        for uid in self.catalog.recover_after_restart():
            log.warning("series %s was interrupted while PROCESSING; state=COMPLETE again", uid)
        check_spool(self.spool, self.catalog)
        if not self.settings.destinations:
            log.warning("no [[destinations]] configured: derived series will wait in state DERIVED")
        http = self.settings.http
        if http.enabled:
            try:
                self.http = StatusServer(
                    http.host,
                    http.port,
                    self.health,
                    self.metrics.exposition,
                    self.catalog.series_overview,
                    self.catalog.associations,
                )
            except OSError as exc:
                raise ConfigError(f"[http] cannot listen on {http.host}:{http.port}: {exc}") from exc
            self.http.start()
        self.server = start_scp(self.settings.node, self.spool, self.catalog, self.admission, self.audit)
        self.scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(3)}, timezone="UTC")
        every = self.settings.series.poll_interval_s
        common = dict(trigger="interval", seconds=every, max_instances=1, coalesce=True, misfire_grace_time=None)
        self.scheduler.add_job(self.complete_job, id="complete", **common)
        self.scheduler.add_job(self.process_job, id="process", **common)
        self.scheduler.add_job(self.send_job, id="send", **common)
        retention = dict(common, seconds=self.settings.retention.check_interval_s)
        self.scheduler.add_job(self.retention_job, id="retention", next_run_time=datetime.now(UTC), **retention)
        self.scheduler.start()
        log.info("node started")

    def stop(self) -> None:
        log.info("stopping")
        self.stop_event.set()
        if self.server is not None:
            self.server.shutdown()
        if self.http is not None:
            self.http.stop()
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.catalog.close()
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

        def scp() -> Check:
            if self.server is None or self.server.socket.fileno() < 0:
                return Check(False, "SCP not listening")
            host, port = self.server.server_address[:2]
            return Check(True, f"{self.settings.node.ae_title} listening on {host}:{port}")

        def scheduler() -> Check:
            return self.heartbeat.check(self.scheduler is not None and self.scheduler.running)

        def catalog() -> Check:
            self.catalog.write_probe()
            return Check(True, "writable")

        def model() -> Check:
            if self.denoiser is None:
                return Check(False, "no model loaded")
            info = self.denoiser.info
            if not info.weights_path.exists():
                return Check(
                    False, f"{info.name} {info.version} loaded, but {info.weights_path} is gone: a restart will fail"
                )
            return Check(True, f"{info.name} {info.version} on {self.denoiser.inferer.device}")

        def disk() -> Check:
            free, limit = self.admission.free_mb(), self.settings.node.min_free_mb
            return Check(
                free >= limit, f"{free:.0f} MiB free under {self.settings.node.data_dir} (min_free_mb={limit:g})"
            )

        return run_checks({"scp": scp, "scheduler": scheduler, "catalog": catalog, "model": model, "disk": disk})

    def complete_job(self) -> None:
        self.heartbeat.beat()
        if quiet_period.mark_complete(self.catalog, self.settings):
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
                claim = self.catalog.claim_for_processing()
                if claim is None:
                    return
                self.process(claim)
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
                claim = self.catalog.claim_for_sending(SEND_LEASE_S)
                if claim is None:
                    return
                self.send(claim)
        finally:
            self._running.discard("send")

    # ---- stages --------------------------------------------------------------------------------------------

    def process(self, claim: Claim) -> None:
        """Denoise a claimed series; the catalog says DERIVED, FAILED, or (interrupted) COMPLETE afterwards."""
        assert self.denoiser is not None
        log.info("series %s state=PROCESSING", claim.series_uid)
        paths = [Path(i.path) for i in self.catalog.instances(claim.series_id)]
        started = time.monotonic()

        def progress(done: int, total: int) -> None:
            log.debug("series %s: %d/%d slices", claim.series_uid, done, total)
            self.catalog.record_progress(claim, done, total)

        try:
            result = self.denoiser.denoise_series(
                claim.series_uid,
                paths,
                self.spool.derived_path,
                progress=progress,
                stop=self.stop_event,
            )
        except Interrupted:
            self.catalog.requeue(claim)
            log.info("series %s interrupted by shutdown; state=COMPLETE", claim.series_uid)
            return
        except Exception as exc:
            self.metrics.series_processed.labels("failed").inc()
            log.exception("series %s failed while processing", claim.series_uid)
            self.catalog.fail(claim.series_id, "process", f"{type(exc).__name__}: {exc}", SeriesState.PROCESSING)
            log.error("series %s state=FAILED: %s", claim.series_uid, exc)
            return
        records = [DerivedRecord(sop, src, str(path)) for sop, src, path in result.written]
        seconds = time.monotonic() - started
        self.metrics.series_processed.labels("derived").inc()
        if result.images:
            self.metrics.inference_seconds_per_slice.observe(result.timings["inference"] / result.images)
        self.metrics.slices_flagged.inc(len(result.flagged))
        hold = None
        if result.flagged and self.settings.guard.policy == "hold":
            hold = (
                f"held for review: the consistency guard flagged {len(result.flagged)} of {len(result.verdicts)} "
                f"slices (first: {result.verdicts[result.flagged[0]].summary()}); "
                "`denoise-node retry` sends it as it is"
            )
        if self.catalog.finish_processing(
            claim,
            result.derived_series_uid,
            self.denoiser.info.version,
            records,
            processing_seconds=seconds,
            hold_reason=hold,
        ):
            if hold:
                log.warning("series %s state=FAILED: %s", claim.series_uid, hold)
            else:
                log.info("series %s state=DERIVED (%d instances)", claim.series_uid, len(records))
                self._run_now("send")
        else:
            log.info("series %s received new instances while processing; state=RECEIVING", claim.series_uid)

    def send(self, claim: Claim) -> None:
        """Send a DERIVED series to every destination that has not acknowledged it yet."""
        files = [Path(d.path) for d in self.catalog.derived_instances(claim.series_id)]
        done = self.catalog.delivered_to(claim)
        errors = []
        for dest in self.settings.destinations_for(self.catalog.series_rule(claim.series_id)):
            if dest.key in done:
                continue
            t0 = time.monotonic()
            try:
                n = send_files(files, dest, self.settings.node.ae_title, self.settings.send.timeout_s)
            except (SendError, OSError) as exc:
                errors.append(str(exc))
                self.metrics.send_failures.labels(dest.key).inc()
                continue
            self.catalog.record_delivery(claim, dest.key)
            self.metrics.instances_sent.labels(dest.key).inc(n)
            seconds = time.monotonic() - t0
            log.info("series %s: %d instances sent to %s in %.2f s", claim.series_uid, n, dest.key, seconds)
        if errors:
            cfg = self.settings.send
            outcome = self.catalog.send_failed(
                claim, "; ".join(errors), cfg.max_attempts, cfg.backoff_s, cfg.backoff_max_s
            )
            log.warning(
                "series %s send attempt %d/%d failed (%s); state=%s",
                claim.series_uid,
                claim.attempts + 1,
                cfg.max_attempts,
                "; ".join(errors),
                outcome,
            )
            return
        if self.catalog.send_succeeded(claim):
            log.info("series %s state=SENT", claim.series_uid)
