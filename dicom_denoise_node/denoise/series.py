"""Decode → normalise → tile-by-tile generator → HU → derived instance, for one series.

Shared by the node's worker (files from the spool) and `denoise-node denoise` (files from a folder), so the
network output a PACS receives is exactly what the offline command produces.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from torch import nn

from dicom_denoise_node.config import DeriveSettings, GuardSettings, ModelSettings, ReportSettings
from dicom_denoise_node.denoise.decode import Skipped, SourceSlice, iter_slices, scan_series
from dicom_denoise_node.denoise.decode_process import DecoderProcess
from dicom_denoise_node.denoise.derive import DerivationInfo, derive_instance, derived_series_uid, encode
from dicom_denoise_node.denoise.derive_enhanced import FrameCollector
from dicom_denoise_node.denoise.ensemble import with_self_ensemble
from dicom_denoise_node.denoise.guard import SliceVerdict, check_slice
from dicom_denoise_node.denoise.inference import TiledInferer
from dicom_denoise_node.denoise.noise import FALLBACK_NOISE_HU, conditioning_noise_hu, noise_map_value, with_noise_map
from dicom_denoise_node.denoise.noise_target import resolve_target, target_strength
from dicom_denoise_node.denoise.quality_report import ReportInput, build_report, header_only, warm_up
from dicom_denoise_node.model.registry import ModelInfo
from dicom_denoise_node.store.catalog import REPORT_SOURCE
from dicom_denoise_node.store.spool import write_atomic

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


class NothingToDenoise(RuntimeError):
    """Every instance of the series was skipped; the message lists why."""


class Interrupted(RuntimeError):
    """The node is stopping; the series goes back to the queue."""


@dataclass
class SeriesResult:
    derived_series_uid: str
    written: list[tuple[str, str, Path]] = field(default_factory=list)  # (derived SOP, source SOP, path)
    skipped: list[Skipped] = field(default_factory=list)
    timings: dict[str, float] = field(
        default_factory=lambda: {
            "decode": 0.0,
            "inference": 0.0,
            "guard": 0.0,
            "encode": 0.0,
            "waited": 0.0,
            "report": 0.0,
        }
    )
    verdicts: list[SliceVerdict] = field(default_factory=list)
    report_path: Path | None = None
    slices: int = 0  # slices denoised: every frame of an Enhanced CT counts, its one derived object is one image

    @property
    def images(self) -> int:
        """Derived images written (the quality report, which has no source instance, is not one)."""
        return sum(1 for _, source, _ in self.written if source != REPORT_SOURCE)

    @property
    def flagged(self) -> list[int]:
        """Indices (in written order) of the slices the guard flagged."""
        return [i for i, v in enumerate(self.verdicts) if v.flagged]


MAX_IN_FLIGHT = 4  # denoised slices waiting for the worker thread: bounds memory, keeps the order


@dataclass(frozen=True)
class _Finished:
    """One slice (or Enhanced CT frame) done by the worker thread."""

    written: tuple[str, str, Path] | None  # None: a frame whose multi-frame object is not whole yet
    verdict: SliceVerdict | None
    report_pairs: list[tuple[Dataset, Dataset, SliceVerdict]]  # a multi-frame object's all come with its last frame
    guard_s: float
    encode_s: float


class SeriesDenoiser:
    """Holds the loaded generator and the tiler; denoises one series at a time."""

    def __init__(
        self,
        network: nn.Module,
        info: ModelInfo,
        model_settings: ModelSettings,
        derive_settings: DeriveSettings,
        device: str = "cpu",
        guard: GuardSettings | None = None,
        report: ReportSettings | None = None,
        decoder: DecoderProcess | None = None,
    ) -> None:
        self.info = info
        self.guard = guard or GuardSettings()
        self.report = report or ReportSettings(enabled=False)
        self.derive_settings = derive_settings
        if self.report.enabled:
            try:
                warm_up()
            except Exception as exc:  # a warm-up never stops the node; the first series pays instead
                log.warning("quality report warm-up failed (%s: %s)", type(exc).__name__, exc)
        # 0 = the model's own setting: what its card's figures were measured with (denoise/ensemble.py).
        self.self_ensemble = model_settings.self_ensemble or info.self_ensemble
        self.inferer = TiledInferer(
            with_self_ensemble(network, self.self_ensemble),
            tile_size=model_settings.tile_size,
            overlap=model_settings.tile_overlap,
            batch_size=model_settings.batch_size,
            device=device,
            half_precision=model_settings.half_precision,
            compile=model_settings.compile,
            channels=2 if info.noise_conditioning else 1,
        )
        self.noise_levels: list[float] = []  # each slice's measured level (conditioning or noise target), last series
        self.decoder = decoder  # None: pixels decoded in this process; else in its child (decode_process.py)
        self.strength = model_settings.strength
        self.target_noise_hu = resolve_target(model_settings.target_noise_hu, self.strength, info.target_noise_hu)
        self.derivation = DerivationInfo(
            info.name,
            info.version,
            derive_settings,
            self.strength,
            self.self_ensemble,
            model_kind=info.kind,
            noise_conditioned=info.noise_conditioning,
            target_noise_hu=self.target_noise_hu,
            model_notice=info.default_notice,
            short_kind=info.short_kind,
        )
        self.configured_target = model_settings.target_noise_hu

    def close(self) -> None:
        """End the decoding child, if there is one."""
        if self.decoder is not None:
            self.decoder.close()

    def denoise_hu(self, slices: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """HU in, HU out. Pixels outside the model's HU window (padding, metal) pass through unchanged.

        A noise-conditioned model gets each slice with its noise-level map, and a noise target sets each slice's
        blend (denoise/noise_target.py), from the level measured on that input slice (``conditioning_noise_hu``; a
        slice without soft tissue takes the previous slice's, one series being one dose), kept in ``noise_levels``
        and logged at debug."""
        pending: list[tuple[np.ndarray, float]] = []
        self.noise_levels = []
        measure = self.info.noise_conditioning or self.target_noise_hu > 0

        def normalised() -> Iterator[np.ndarray]:
            for hu in slices:
                if not measure:
                    pending.append((hu, self.strength))
                    yield self.info.normalize(hu)
                    continue
                previous = self.noise_levels[-1] if self.noise_levels else FALLBACK_NOISE_HU
                level = conditioning_noise_hu(hu, previous)
                self.noise_levels.append(level)
                strength = target_strength(level, self.target_noise_hu) if self.target_noise_hu else self.strength
                pending.append((hu, strength))
                log.debug("slice %d: noise level %.1f HU, strength %.3f", len(self.noise_levels), level, strength)
                if not self.info.noise_conditioning:
                    yield self.info.normalize(hu)
                    continue
                value = noise_map_value(level, self.info.hu_min, self.info.hu_max)
                yield with_noise_map(self.info.normalize(hu), value)

        for out in self.inferer.run(normalised()):
            hu, strength = pending.pop(0)
            result = self.info.denormalize(out)
            if strength != 1.0:  # a blend in HU, like a vendor's strength levels
                result = hu + np.float32(strength) * (result - hu)
            outside = (hu < self.info.hu_min) | (hu > self.info.hu_max)
            result[outside] = hu[outside]
            yield result

    def denoise_series(
        self,
        source_series_uid: str,
        paths: list[Path],
        out_path: Callable[[str, str], Path],
        progress: Progress | None = None,
        stop: threading.Event | None = None,
        variant: int = 0,
    ) -> SeriesResult:
        """Denoise the files of one series and write each derived instance atomically to out_path(series, sop);
        ``variant``: which derivation of the source this is (its SeriesNumber, denoise/naming.py)."""
        refs, skipped = scan_series(paths)
        if not refs:
            reasons = "; ".join(sorted({s.reason for s in skipped})) or "no instances"
            raise NothingToDenoise(f"nothing to denoise in series {source_series_uid}: {reasons}")
        derivation = replace(self.derivation, variant=variant)
        result = SeriesResult(derived_series_uid(source_series_uid, derivation.uid_key), skipped=skipped)
        sources: list[SourceSlice] = []
        timings = result.timings
        started = time.perf_counter()

        def hu_stream() -> Iterator[np.ndarray]:
            slices = iter_slices(refs, None if self.decoder is None else self.decoder.hu)
            while True:
                if stop is not None and stop.is_set():
                    raise Interrupted("node stopping")
                t0 = time.perf_counter()
                src = next(slices, None)
                timings["decode"] += time.perf_counter() - t0
                if src is None:
                    return
                sources.append(src)
                yield src.hu

        report_slices: list[tuple[Dataset, Dataset, SliceVerdict]] = []
        done = 0

        def collect(block: bool) -> None:
            """Take finished slices in order; blocking time is the only cost the overlap leaves visible."""
            nonlocal done
            while in_flight and (block or in_flight[0].done()):
                t0 = time.perf_counter()
                finished = in_flight.popleft().result()
                timings["waited"] += time.perf_counter() - t0
                timings["guard"] += finished.guard_s
                timings["encode"] += finished.encode_s
                if finished.written is not None:
                    result.written.append(finished.written)
                if finished.verdict is not None:
                    result.verdicts.append(finished.verdict)
                report_slices.extend(finished.report_pairs)
                done += 1
                result.slices = done
                if progress:
                    progress(done, len(refs))

        # The guard, derivation, encoding and the durable write of slice k run on one worker thread while the
        # generator computes slice k + 1 (bounded: at most MAX_IN_FLIGHT slices wait there).
        in_flight: deque[Future[_Finished]] = deque()
        frames = FrameCollector(result.derived_series_uid, derivation)  # Enhanced CT frames until each object is whole
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="derive") as worker:
            try:
                for hu in self.denoise_hu(hu_stream()):
                    src = sources.pop(0)
                    uid = result.derived_series_uid
                    in_flight.append(
                        worker.submit(self._finish_slice, src, hu, uid, out_path, source_series_uid, derivation, frames)
                    )
                    collect(block=len(in_flight) >= MAX_IN_FLIGHT)
                collect(block=True)
            finally:
                for future in in_flight:
                    future.cancel()
        if report_slices:
            self._write_report(source_series_uid, result, report_slices, out_path, derivation)
        # Inference is what remains of the wall time: tiling, the network and the HU conversions. Guard and
        # encode+write ran beside it (their own durations are reported); "waited" is the part that did not overlap,
        # and "report" the quality report built after the last slice.
        timings["inference"] = time.perf_counter() - started - timings["decode"] - timings["waited"] - timings["report"]
        _log_timings(source_series_uid, result)
        return result

    def _write_report(
        self,
        source_series_uid: str,
        result: SeriesResult,
        report_slices: list[tuple[Dataset, Dataset, SliceVerdict]],
        out_path: Callable[[str, str], Path],
        derivation: DerivationInfo,
    ) -> None:
        """The quality report (SR) beside the derived series, written like its instances."""
        t0 = time.perf_counter()
        report = build_report(
            ReportInput(
                source_series_uid,
                result.derived_series_uid,
                derivation,
                [derivation.notice, self.report.notice],
                self.guard.policy if self.guard.enabled else "off",
                report_slices,
            ),
            manufacturer=self.derive_settings.manufacturer,
            institution=self.derive_settings.institution_name,
        )
        path = out_path(str(report.SeriesInstanceUID), str(report.SOPInstanceUID))
        write_atomic(path, encode(report))
        result.written.append((str(report.SOPInstanceUID), REPORT_SOURCE, path))
        result.report_path = path
        result.timings["report"] += time.perf_counter() - t0

    def _finish_slice(
        self,
        src: SourceSlice,
        hu: np.ndarray,
        derived_series: str,
        out_path: Callable[[str, str], Path],
        source_series_uid: str,
        derivation: DerivationInfo,
        frames: FrameCollector,
    ) -> _Finished:
        """Guard, derive, encode and durably write one denoised slice (on the worker thread); an Enhanced CT frame is
        kept by ``frames`` until its object's last one, which writes the whole derived object."""
        t0 = time.perf_counter()
        verdict = None
        if self.guard.enabled or self.report.enabled:  # the report needs the guard's noise figures
            verdict = check_slice(src.hu, hu, self.guard)
            if not self.guard.enabled:
                verdict = replace(verdict, reasons=[])
        flagged = verdict is not None and verdict.flagged
        comment = f"Denoising guard flagged this slice: {verdict.summary()}" if flagged else None
        if comment:
            log.warning("series %s: slice %s flagged: %s", source_series_uid, src.ref.sop_uid, verdict.summary())
        t1 = time.perf_counter()
        if src.ref.frame is None:
            derived = derive_instance(src.dataset, hu, derived_series, derivation, comment=comment)
            verdicts = [verdict] if verdict is not None else []
        else:
            whole = frames.add(src, hu, verdict, comment)
            derived, verdicts = (whole.derived, whole.verdicts) if whole is not None else (None, [])
        written = None
        if derived is not None:
            path = out_path(derived_series, str(derived.SOPInstanceUID))
            write_atomic(path, encode(derived))
            written = (str(derived.SOPInstanceUID), src.ref.sop_uid, path)
        pairs = []
        if derived is not None and self.report.enabled:
            pairs = [(header_only(src.dataset), header_only(derived), v) for v in verdicts]
        return _Finished(
            written=written,
            verdict=verdict,
            report_pairs=pairs,
            guard_s=t1 - t0,
            encode_s=time.perf_counter() - t1,
        )


def _log_timings(source_series_uid: str, result: SeriesResult) -> None:
    """One line per series: what was made and where the time went."""
    timings = result.timings
    log.info(
        "series %s: %d slices denoised into %d images of %s (%d skipped, %d flagged by the guard); decode %.2f s, "
        "inference %.2f s, guard %.2f s, encode+write %.2f s (both beside inference), waited %.2f s, "
        "report %.2f s",
        source_series_uid,
        result.slices,
        result.images,
        result.derived_series_uid,
        len(result.skipped),
        len(result.flagged),
        timings["decode"],
        timings["inference"],
        timings["guard"],
        timings["encode"],
        timings["waited"],
        timings["report"],
    )
