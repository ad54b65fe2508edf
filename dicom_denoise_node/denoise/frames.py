"""Enhanced CT (multi-frame): its frames, where each one sits, and each one's HU.

Real scanners (Siemens NAEOTOM, Philips Spectral) send a series as one Enhanced CT Image, hundreds of frames in
one object. What a single-frame CT says at the top level (position, orientation, rescale) sits there in functional
groups (PS3.3 C.7.6.16), each either shared by every frame or given per frame: a frame may have its own rescale.
This module reads them; :mod:`.derive_enhanced` writes the derived object back in the same IOD.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage

log = logging.getLogger(__name__)

MULTIFRAME_CT = frozenset({str(EnhancedCTImageStorage), str(LegacyConvertedEnhancedCTImageStorage)})
# The functional groups every frame needs, here: where it is and how its stored values become HU.
_NEEDED = ("PlanePositionSequence", "PlaneOrientationSequence", "PixelValueTransformationSequence")


def is_multiframe_ct(ds: Dataset) -> bool:
    """An Enhanced (or Legacy Converted Enhanced) CT Image: denoised frame by frame."""
    return str(ds.get("SOPClassUID", "")) in MULTIFRAME_CT


def frame_count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def frame_group(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """The item of functional group ``keyword`` that applies to frame ``index`` (0-based): its own, else the
    shared one, else None."""
    per_frame, shared = ds.get("PerFrameFunctionalGroupsSequence"), ds.get("SharedFunctionalGroupsSequence")
    for item in (per_frame[index] if per_frame and index < len(per_frame) else None, shared[0] if shared else None):
        sequence = item.get(keyword) if item is not None else None
        if sequence:
            return sequence[0]
    return None


def frames_problem(ds: Dataset) -> str | None:
    """Why this multi-frame CT's frames cannot be placed or read as HU (headers only), or None."""
    frames = frame_count(ds)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame or len(per_frame) != frames:
        have = len(per_frame) if per_frame else 0
        return f"Enhanced CT with {have} Per-Frame Functional Groups items for {frames} frames: frames not placed"
    if not ds.get("SharedFunctionalGroupsSequence"):
        return "Enhanced CT without Shared Functional Groups: frames not placed"
    for index in range(frames):
        for keyword in _NEEDED:
            if frame_group(ds, index, keyword) is None:
                return f"Enhanced CT frame {index + 1} has no {keyword} (shared or per frame)"
    return None


def frame_position(ds: Dataset, index: int) -> float | None:
    """Where frame ``index`` sits along its slice normal (mm), or None."""
    position = frame_group(ds, index, "PlanePositionSequence")
    orientation = frame_group(ds, index, "PlaneOrientationSequence")
    try:
        ipp = [float(v) for v in position.ImagePositionPatient]
        iop = [float(v) for v in orientation.ImageOrientationPatient]
    except (AttributeError, TypeError, ValueError):
        return None
    return float(np.dot(np.cross(iop[:3], iop[3:]), ipp))


def frame_rescale(ds: Dataset, index: int) -> Dataset:
    """Frame ``index``'s Pixel Value Transformation as a data set ``derive.hu_to_stored`` reads: RescaleSlope,
    RescaleIntercept and the image's pixel representation and bits stored."""
    item = frame_group(ds, index, "PixelValueTransformationSequence")
    rescale = Dataset()
    rescale.RescaleSlope = float(item.get("RescaleSlope", 1) or 1) if item is not None else 1.0
    rescale.RescaleIntercept = float(item.get("RescaleIntercept", 0) or 0) if item is not None else 0.0
    rescale.PixelRepresentation = int(ds.get("PixelRepresentation", 0))
    rescale.BitsStored = int(ds.get("BitsStored", 16))
    return rescale


def volume_hu(ds: Dataset) -> np.ndarray:
    """Every frame in HU (float32, frames × rows × columns, in stored order), each through its own rescale
    (highdicom reads the Pixel Value Transformation, shared or per frame). Filled frame by frame: the peak is
    about 4 × the pixel data (all frames at once: 6 ×), which counts against ``[series] decode_memory_mb``."""
    image = hd.Image.from_dataset(ds, copy=False)
    volume = np.empty((frame_count(ds), int(ds.Rows), int(ds.Columns)), np.float32)
    for index in range(len(volume)):
        volume[index] = image.get_frame(
            index, as_index=True, dtype=np.float32, apply_modality_transform=True, apply_real_world_transform=False
        )
    return volume
