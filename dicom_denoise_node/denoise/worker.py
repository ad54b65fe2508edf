"""③ The worker: the "process" job claims COMPLETE series one after another while the disk has room
(:class:`ProcessJob`); each claimed series is denoised under a renewed lease (lease.py), then recorded DERIVED,
FAILED (error or held by the guard) or, when the node stops meanwhile, COMPLETE again; a claim lost to another
worker records nothing (:func:`denoise_claim`)."""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from dicom_denoise_node.config import GuardSettings, Settings
from dicom_denoise_node.denoise.lease import ClaimLease
from dicom_denoise_node.denoise.rule_denoisers import RuleDenoisers
from dicom_denoise_node.denoise.series import Interrupted, SeriesDenoiser, SeriesResult
from dicom_denoise_node.ops.metrics import NodeMetrics
from dicom_denoise_node.store.catalog import Catalog, Claim, DerivedRecord, QualityRecord, SeriesState
from dicom_denoise_node.store.disk import DiskSpace
from dicom_denoise_node.store.retention import delete_files
from dicom_denoise_node.store.spool import Spool

log = logging.getLogger(__name__)


def _denoise_each(
    claim: Claim,
    catalog: Catalog,
    denoisers: Sequence[SeriesDenoiser],
    paths: list[Path],
    spool: Spool,
    stop: threading.Event,
) -> list[tuple[SeriesDenoiser, SeriesResult]]:
    """Each derived series of the claim, one after another; the numbering variant of each derivation comes from
    the catalog (recorded before its first instance is written, so a retry keeps its SeriesNumber)."""

    def progress(k: int) -> Callable[[int, int], None]:
        def report(done: int, total: int) -> None:
            log.debug("series %s: %d/%d slices (derived series %d of %d)", claim.series_uid, done, total, k + 1,
                      len(denoisers))  # fmt: skip
            catalog.queue.record_progress(claim, k * total + done, len(denoisers) * total)

        return report

    results = []
    for k, denoiser in enumerate(denoisers):
        info = denoiser.derivation
        variant = catalog.derivations.variant(claim.series_id, info.uid_key, info.rule)
        result = denoiser.denoise_series(
            claim.series_uid, paths, spool.derived_path, progress=progress(k), stop=stop, variant=variant
        )
        results.append((denoiser, result))
    return results


def denoise_claim(
    claim: Claim,
    catalog: Catalog,
    denoisers: Sequence[SeriesDenoiser],
    spool: Spool,
    metrics: NodeMetrics,
    guard: GuardSettings,
    stop: threading.Event,
    lease_s: float,
) -> bool:
    """Denoise a claimed series into one derived series per denoiser (its rule's, and those of the rules it falls
    through to: denoise/rule_denoisers.py); True when it is DERIVED and ready to send."""
    log.info("series %s state=PROCESSING", claim.series_uid)
    paths = [Path(i.path) for i in catalog.queue.instances(claim.series_id)]
    earlier = {d.path for d in catalog.deliveries.derived_instances(claim.series_id)}  # what this run replaces
    started = time.monotonic()
    lease = ClaimLease(catalog, claim, lease_s, stop)
    try:
        with lease:
            results = _denoise_each(claim, catalog, denoisers, paths, spool, lease.abandon)
    except Interrupted:
        if lease.lost:
            return False  # another worker has the series now; the keeper said so
        catalog.queue.requeue(claim)
        log.info("series %s interrupted by shutdown; state=COMPLETE", claim.series_uid)
        return False
    except Exception as exc:
        metrics.series_processed.labels("failed").inc()
        log.exception("series %s failed while processing", claim.series_uid)
        error = f"{type(exc).__name__}: {exc}"
        if catalog.queue.fail(claim.series_id, "process", error, SeriesState.PROCESSING, owner=claim.owner):
            log.error("series %s state=FAILED: %s", claim.series_uid, exc)
        return False
    records = [DerivedRecord(sop, src, str(path)) for _, r in results for sop, src, path in r.written]
    seconds = time.monotonic() - started
    hold = None
    for _, result in results:
        metrics.series_processed.labels("derived").inc()
        slices = result.slices or result.images  # an Enhanced CT is one image of many slices (frames)
        if slices:
            metrics.inference_seconds_per_slice.observe(result.timings["inference"] / slices)
        metrics.slices_flagged.inc(len(result.flagged))
        if result.flagged and guard.policy == "hold" and hold is None:
            hold = (
                f"held for review: the consistency guard flagged {len(result.flagged)} of {len(result.verdicts)} "
                f"slices (first: {result.verdicts[result.flagged[0]].summary()}); "
                "`denoise-node retry` sends it as it is"
            )
    # The derivation key (version, and strength / self-ensemble when not 1) of the first derived series: what its
    # UIDs were made from, so `status` says how a series was made and the demo finds its report (64 characters).
    first, result = results[0]
    if not catalog.queue.finish_processing(
        claim,
        result.derived_series_uid,
        first.derivation.uid_key[:64],
        records,
        processing_seconds=seconds,
        hold_reason=hold,
    ):
        log.info("series %s: result not recorded (new instances arrived meanwhile, or the claim was lost)",
                 claim.series_uid)  # fmt: skip
        return False
    _remove_superseded(spool, claim, earlier - {r.path for r in records})
    for denoiser, each in results:
        record_quality(catalog, claim, each, denoiser.derivation.uid_key, guard)
    if hold:
        log.warning("series %s state=FAILED: %s", claim.series_uid, hold)
        return False
    log.info("series %s state=DERIVED (%d instances in %d derived series)", claim.series_uid, len(records),
             len(results))  # fmt: skip
    return True


def _remove_superseded(spool: Spool, claim: Claim, paths: set[str]) -> None:
    """The files of an earlier derivation that this run replaced (`denoise-node reprocess` at another strength, a new
    model): their rows went in the commit that recorded the new ones; left alone, they would be orphans until the
    next start's spool check."""
    if paths:
        delete_files(spool, sorted(paths))
        log.info("series %s: %d files of its earlier derivation removed", claim.series_uid, len(paths))


def record_quality(catalog: Catalog, claim: Claim, result: SeriesResult, key: str, guard: GuardSettings) -> None:
    """Keep the run's guard and noise figures in the catalog (the status page, the guard_flagged notification): a
    summary of the quality report, which goes to the PACS. The series' state is recorded already; a failure here
    is logged, never fails the series."""

    def median(values: list[float]) -> float | None:
        finite = [v for v in values if math.isfinite(v)]
        return float(statistics.median(finite)) if finite else None

    flagged = result.flagged
    record = QualityRecord(
        result.derived_series_uid,
        key,
        result.images,
        len(flagged),
        median([v.noise_before for v in result.verdicts]),
        median([v.noise_after for v in result.verdicts]),
        guard.policy if guard.enabled else "off",
        result.verdicts[flagged[0]].summary() if flagged else None,
    )
    try:
        catalog.quality.record(claim.series_id, record)
    except Exception:
        log.exception("series %s: its quality summary was not recorded", claim.series_uid)


class ProcessJob:
    """One pass of the "process" job: claim and denoise series until none is left or the node stops.

    Below the free-space watermark it claims nothing (it would write derived files onto a full disk) and says so
    once, and once again when space returns. ``derived`` is called after each series ready to send (the wiring
    starts the send job then, rather than at its next poll)."""

    def __init__(
        self,
        catalog: Catalog,
        denoisers: RuleDenoisers,
        spool: Spool,
        metrics: NodeMetrics,
        settings: Settings,
        disk: DiskSpace,
        stop: threading.Event,
        derived: Callable[[], None],
    ) -> None:
        self.catalog, self.denoisers, self.spool, self.metrics = catalog, denoisers, spool, metrics
        self.settings, self.disk, self.stop, self.derived = settings, disk, stop, derived
        self.disk_low = False  # this job's own memory of its last check, for the two log lines

    def run(self) -> None:
        if not self.disk_has_room():
            return
        series = self.settings.series
        while not self.stop.is_set():
            claim = self.catalog.queue.claim_for_processing(series.max_attempts, series.claim_lease_s)
            if claim is None:
                return
            instances = [(Path(i.path), i.calling_aet) for i in self.catalog.queue.instances(claim.series_id)]
            rule = self.catalog.completion.series_rule(claim.series_id)
            denoisers = self.denoisers.for_series(rule, instances, claim.strength)
            if denoise_claim(claim, self.catalog, denoisers, self.spool, self.metrics, self.settings.guard,
                             self.stop, series.claim_lease_s):  # fmt: skip
                self.derived()

    def disk_has_room(self) -> bool:
        """Processing writes derived files: below the free-space watermark it waits (and says so once)."""
        ok = self.disk.ok()
        if not ok and not self.disk_low:
            log.warning(
                "free space %.0f MiB below min_free_mb=%g: processing paused until space returns",
                self.disk.free_mb(),
                self.disk.min_free_mb,
            )
        elif ok and self.disk_low:
            log.info("free space %.0f MiB: processing resumes", self.disk.free_mb())
        self.disk_low = not ok
        return ok
