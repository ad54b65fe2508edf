"""Reading a received series back from the spool: which instances (or Enhanced CT frames) are denoisable, in slice
order, as HU.

Decoding happens here, in the worker, never in the C-STORE handler. Compressed transfer syntaxes decode through
pydicom's pixel backends (pylibjpeg, pyjpegls). Instances that cannot be denoised are skipped with a reason that
ends up in the log and, when nothing is left, in the series' last_error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_rescale
from pydicom.uid import HTJ2K, JPEG2000, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless

from dicom_denoise_node.codecs import missing_codec
from dicom_denoise_node.denoise.frames import frame_count, frame_position, frames_problem, is_multiframe_ct, volume_hu

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass(frozen=True)
class SliceRef:
    """A denoisable instance, or one frame of a multi-frame one, and where it sits along the slice normal."""

    path: Path
    sop_uid: str
    position: float
    instance_number: int
    frame: int | None = None  # 0-based frame of an Enhanced CT; None: a single-frame CT image


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


@dataclass
class SourceSlice:
    ref: SliceRef
    dataset: Dataset
    hu: np.ndarray


LOSSY_SYNTAXES = {
    str(uid) for uid in (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000, HTJ2K)
}  # lossy transfer syntaxes (JPEG 2000 "lossless or lossy" counts as lossy: nothing says which)
MAX_DECODE_PIXELS = 8192 * 8192  # the worker's own limit (the SCP refuses more than [node] max_image_pixels first)


def _position(ds: Dataset) -> float | None:
    try:
        ipp = [float(v) for v in ds.ImagePositionPatient]
        iop = [float(v) for v in ds.ImageOrientationPatient]
    except (AttributeError, TypeError, ValueError):
        return None
    normal = np.cross(iop[:3], iop[3:])
    return float(np.dot(normal, ipp))


def _skip_reason(ds: Dataset) -> str | None:
    if str(ds.get("Modality", "")) != "CT":
        return f"modality {ds.get('Modality', '')!r} is not CT"
    multiframe = is_multiframe_ct(ds)
    if str(ds.get("SOPClassUID", "")) != CT_IMAGE_STORAGE and not multiframe:
        return f"SOP class {ds.get('SOPClassUID', '')} is neither CT Image Storage nor Enhanced CT Image Storage"
    image_type = [str(v).upper() for v in ds.get("ImageType", [])]
    if "LOCALIZER" in image_type:
        return "localizer (scout) image"
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        return f"SamplesPerPixel {ds.get('SamplesPerPixel')} is not 1"
    if not multiframe and frame_count(ds) != 1:
        return "multi-frame CT image in the single-frame CT Image Storage class"
    if "Rows" not in ds or "Columns" not in ds:
        return "no Rows/Columns"
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if str(ds.get("LossyImageCompression", "")) == "01" or syntax in LOSSY_SYNTAXES:
        # A lossy source has lost exactly the fine detail the guard and the reader check: denoising it again would
        # stack a second approximation on the first, and its DERIVED output would hide that.
        return f"lossy-compressed source (transfer syntax {syntax or '?'}): not denoised"
    if syntax and (missing := missing_codec(syntax)):
        return missing
    if int(ds.Rows) * int(ds.Columns) > MAX_DECODE_PIXELS:
        return f"{ds.Rows} × {ds.Columns} pixels: over the worker's limit of {MAX_DECODE_PIXELS}, not decoded"
    return frames_problem(ds) if multiframe else None


def _frame_refs(path: Path, ds: Dataset) -> list[SliceRef]:
    """One ref per frame of a multi-frame CT, in slice order (frame order where positions tie: a 4D volume)."""
    number = int(ds.get("InstanceNumber") or 0)
    refs = []
    for index in range(frame_count(ds)):
        pos = frame_position(ds, index)
        refs.append(SliceRef(path, str(ds.SOPInstanceUID), pos if pos is not None else float(index), number, index))
    return sorted(refs, key=lambda r: (r.position, r.frame))


def scan_series(paths: list[Path]) -> tuple[list[SliceRef], list[Skipped]]:
    """Headers only: pick the denoisable instances and order them along the slice normal; a multi-frame
    instance's frames come together (it is decoded once), after the single-frame ones."""
    refs: list[SliceRef] = []
    volumes: list[list[SliceRef]] = []
    skipped: list[Skipped] = []
    for path in paths:
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            skipped.append(Skipped(path, f"unreadable: {exc}"))
            continue
        reason = _skip_reason(ds)
        if reason:
            skipped.append(Skipped(path, reason))
            continue
        if is_multiframe_ct(ds):
            volumes.append(_frame_refs(path, ds))
            continue
        number = int(ds.get("InstanceNumber") or 0)
        pos = _position(ds)
        refs.append(SliceRef(path, str(ds.SOPInstanceUID), pos if pos is not None else float(number), number))
    refs.sort(key=lambda r: (r.position, r.instance_number))
    volumes.sort(key=lambda frames: (frames[0].position, frames[0].instance_number))
    refs += [ref for frames in volumes for ref in frames]
    for s in skipped:
        log.info("skipping %s: %s", s.path.name, s.reason)
    return refs, skipped


def dataset_hu(ds: Dataset) -> np.ndarray:
    """HU (float32) of a decoded CT data set through its own rescale (slope/intercept, or a Modality LUT): the one
    HU reader of the project, used by the node, the trainer, the demo, the benchmarks and the tests. A multi-frame
    CT gives frames × rows × columns, each frame through its own rescale (frames.py)."""
    if is_multiframe_ct(ds):
        return volume_hu(ds)
    return apply_rescale(ds.pixel_array, ds).astype(np.float32)


def file_hu(path: Path) -> np.ndarray:
    """HU (float32) of one DICOM file."""
    return dataset_hu(dcmread(path))


def read_hu(ref: SliceRef, decode: Callable[[Path], np.ndarray] | None = None) -> SourceSlice:
    """Decode one slice to HU (float32) through its own rescale slope/intercept; ``decode`` (a path's HU, such as
    DecoderProcess.hu) decodes the pixels elsewhere, this process reading only the data set."""
    ds = dcmread(ref.path)
    return SourceSlice(ref, ds, dataset_hu(ds) if decode is None else decode(ref.path))


def iter_slices(refs: list[SliceRef], decode: Callable[[Path], np.ndarray] | None = None) -> Iterator[SourceSlice]:
    """Each ref's slice in HU; a multi-frame instance is decoded once for all its frames (they come together)."""
    volume: SourceSlice | None = None  # the last multi-frame instance decoded: its data set and all its frames
    for ref in refs:
        if ref.frame is None:
            yield read_hu(ref, decode)
            continue
        if volume is None or volume.ref.path != ref.path:
            volume = None  # the previous instance's frames are released before the next one is decoded
            volume = read_hu(ref, decode)
        yield SourceSlice(ref, volume.dataset, volume.hu[ref.frame])
