"""④ The derived Enhanced CT: a denoised multi-frame CT sent back as the same IOD, its functional groups kept.

The single-frame derivation (derive.py) makes everything a PACS and a radiologist expect of the object as a whole:
UIDs from the source and the derivation key, SeriesDescription and number, DerivationDescription, Contributing
Equipment, the site's notice, dates. This adds what an Enhanced CT says per frame (PS3.3 A.38): every frame's own
functional groups kept (Plane Position, Plane Orientation, Pixel Measures, Frame Content, Pixel Value
Transformation, ...), its CT Image Frame Type made DERIVED, a Derivation Image item referencing its source frame,
its pixels written back through its own rescale, and the guard's flag, if any, in its Frame Comments. highdicom has
no Enhanced CT writer; the source's data set is the template, as the derived single-frame image's is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_denoise_node.denoise.decode import SourceSlice
from dicom_denoise_node.denoise.derive import SOURCE_PURPOSE, DerivationInfo, derive_instance, hu_to_stored
from dicom_denoise_node.denoise.frames import frame_count, frame_rescale
from dicom_denoise_node.denoise.guard import SliceVerdict

log = logging.getLogger(__name__)

DERIVATION = codes.DCM.Smoothing  # CID 7203 Image Derivation: the nearest standard concept to noise reduction


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _derived_type(values: list[str]) -> list[str]:
    """ImageType / FrameType of a derived Enhanced CT: value 1 DERIVED, the rest (PRIMARY, flavour, derived pixel
    contrast) as the source said them (PS3.3 C.8.16.1: value 2 of an Enhanced CT is PRIMARY only)."""
    rest = [str(v) for v in values[1:]] or ["PRIMARY", "VOLUME", "NONE"]
    return ["DERIVED", *rest]


def _derivation_item(source: Dataset, index: int, description: str) -> Dataset:
    """The Derivation Image functional group of frame ``index``: what was done, and from which source frame."""
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    ref.ReferencedFrameNumber = index + 1
    ref.PurposeOfReferenceCodeSequence = [_code(*SOURCE_PURPOSE)]
    item = Dataset()
    item.DerivationDescription = description
    item.DerivationCodeSequence = [_code(DERIVATION.value, DERIVATION.scheme_designator, DERIVATION.meaning)]
    item.SourceImageSequence = [ref]
    return item


def _frame_type_items(ds: Dataset) -> list[Dataset]:
    """Every CT Image Frame Type item of the derived object, shared or per frame."""
    groups = list(ds.get("SharedFunctionalGroupsSequence", [])) + list(ds.get("PerFrameFunctionalGroupsSequence", []))
    return [item for group in groups for item in group.get("CTImageFrameTypeSequence", [])]


def derive_enhanced_instance(
    source: Dataset,
    hu: np.ndarray,
    series_uid: str,
    info: DerivationInfo,
    now: datetime | None = None,
    frame_comments: dict[int, str] | None = None,
) -> Dataset:
    """The derived Enhanced CT of ``source`` from its denoised frames (``hu``: frames × rows × columns, in the
    source's frame order); ``frame_comments``: the guard's flag per 0-based frame, in that frame's Frame Comments."""
    frames = frame_count(source)
    if hu.shape != (frames, int(source.Rows), int(source.Columns)):
        raise ValueError(
            f"denoised frames {hu.shape} do not match the source's {frames}x{source.Rows}x{source.Columns}"
        )
    ds = derive_instance(source, hu[0], series_uid, info, now)
    description = ds.DerivationDescription
    # derive.py's single-frame attributes that an Enhanced CT says per frame (Derivation Image) or not at all
    for keyword in ("SourceImageSequence", "DerivationDescription", "RescaleSlope", "RescaleIntercept", "RescaleType"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.ImageType = _derived_type(list(source.get("ImageType", [])))
    for item in _frame_type_items(ds):
        item.FrameType = _derived_type(list(item.get("FrameType", [])))
    comments = frame_comments or {}
    for index, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        group.DerivationImageSequence = [_derivation_item(source, index, description)]
        if index in comments:
            content = group.FrameContentSequence[0]
            content.FrameComments = comments[index][:10240]
    shared = ds.SharedFunctionalGroupsSequence[0]
    if "DerivationImageSequence" in shared:  # a derived source's: per frame now
        del shared.DerivationImageSequence
    _reference_source(ds, source)
    stored = np.stack([hu_to_stored(hu[i], frame_rescale(source, i)) for i in range(frames)])
    ds.NumberOfFrames = frames
    ds.PixelData = stored.tobytes()
    return ds


def _reference_source(ds: Dataset, source: Dataset) -> None:
    """The source object, as the Common Instance Reference module and the Source Image Evidence say it."""

    def instance() -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
        return item

    series = Dataset()
    series.SeriesInstanceUID, series.ReferencedInstanceSequence = source.SeriesInstanceUID, [instance()]
    ds.ReferencedSeriesSequence = [series]
    evidence_series = Dataset()
    evidence_series.SeriesInstanceUID, evidence_series.ReferencedSOPSequence = source.SeriesInstanceUID, [instance()]
    evidence = Dataset()
    evidence.StudyInstanceUID, evidence.ReferencedSeriesSequence = source.StudyInstanceUID, [evidence_series]
    ds.SourceImageEvidenceSequence = [evidence]


@dataclass
class _Pending:
    source: Dataset
    hu: np.ndarray
    done: np.ndarray
    comments: dict[int, str] = field(default_factory=dict)
    verdicts: list[SliceVerdict] = field(default_factory=list)


@dataclass(frozen=True)
class WholeInstance:
    """A multi-frame source's derived object, once its last frame was denoised, and its frames' guard verdicts."""

    derived: Dataset
    source: Dataset
    verdicts: list[SliceVerdict]


class FrameCollector:
    """The denoised frames of multi-frame sources, held until each source object is whole (one series at a time,
    on one thread)."""

    def __init__(self, series_uid: str, info: DerivationInfo) -> None:
        self.series_uid, self.info = series_uid, info
        self._pending: dict[str, _Pending] = {}

    def add(
        self, src: SourceSlice, hu: np.ndarray, verdict: SliceVerdict | None, comment: str | None
    ) -> WholeInstance | None:
        """Keep one denoised frame; the derived object once it was the source's last."""
        ref = src.ref
        if ref.frame is None:
            raise ValueError(f"{ref.sop_uid} is not a frame of a multi-frame image")
        pending = self._pending.get(ref.sop_uid)
        if pending is None:
            frames = frame_count(src.dataset)
            shape = (frames, int(src.dataset.Rows), int(src.dataset.Columns))
            pending = _Pending(src.dataset, np.empty(shape, np.float32), np.zeros(frames, bool))
            self._pending[ref.sop_uid] = pending
        pending.hu[ref.frame], pending.done[ref.frame] = hu, True
        if comment:
            pending.comments[ref.frame] = comment
        if verdict is not None:
            pending.verdicts.append(verdict)
        if not pending.done.all():
            return None
        del self._pending[ref.sop_uid]
        derived = derive_enhanced_instance(
            pending.source, pending.hu, self.series_uid, self.info, frame_comments=pending.comments
        )
        log.debug("multi-frame %s: %d frames derived into %s", ref.sop_uid, len(pending.done), derived.SOPInstanceUID)
        return WholeInstance(derived, pending.source, pending.verdicts)
