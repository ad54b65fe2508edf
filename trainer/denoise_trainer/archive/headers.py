"""Reading an archive's files: which are CT image instances worth indexing, and the header fields the catalog keeps.

Why apart from the catalog writes: reading headers is the slow, file-by-file part of a scan and decides what is
skipped and why (not DICOM, no PatientID, a localizer, another modality, a duplicate); the scan then writes whole
series at once. Only headers are read, never pixels.
"""

from __future__ import annotations

import logging
import statistics
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from denoise_trainer.archive.domain import ctdivol_mgy, exposure_mas

log = logging.getLogger(__name__)

_TAGS = [
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "SeriesDescription",
    "ProtocolName",
    "InstanceNumber",
    "BodyPartExamined",
    "Exposure",
    "ExposureInuAs",
    "XRayTubeCurrent",
    "ExposureTime",
    "CTDIvol",
    "ImageType",
    "Rows",
]


@dataclass(frozen=True)
class InstanceHeader:
    """The header fields the catalog keeps for one instance."""

    path: str
    size: int
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    modality: str
    description: str
    instance_number: int | None
    body_part: str | None
    exposure_mas: float | None
    protocol_name: str = ""
    ctdivol: float | None = None


@dataclass
class SeriesGroup:
    """One series' headers, written to the catalog in one go (series-level fields come from all its slices)."""

    uid: str
    patient_id: str
    study_uid: str
    modality: str
    description: str
    headers: list[InstanceHeader] = field(default_factory=list)

    def body_part(self) -> str | None:
        """The most common BodyPartExamined of its slices."""
        parts = Counter(h.body_part for h in self.headers if h.body_part)
        return parts.most_common(1)[0][0] if parts else None

    def exposure_mas(self) -> float | None:
        """Median over slices: tube current modulation varies the exposure along the series."""
        values = [h.exposure_mas for h in self.headers if h.exposure_mas is not None]
        return round(float(statistics.median(values)), 3) if values else None

    def ctdivol(self) -> float | None:
        """Median CTDIvol (mGy) over slices, for the same reason as the exposure."""
        values = [h.ctdivol for h in self.headers if h.ctdivol is not None]
        return round(float(statistics.median(values)), 4) if values else None

    def protocol_name(self) -> str:
        """The most common ProtocolName of its slices ("" without one)."""
        names = Counter(h.protocol_name for h in self.headers if h.protocol_name)
        return names.most_common(1)[0][0] if names else ""


class NotIndexed(Exception):
    """A file that is not indexed, with the reason shown in the report."""


def _transfer_syntax(ds: Dataset) -> str:
    uid = getattr(ds.file_meta, "TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
    if uid:
        return str(uid)
    implicit, little = ds.original_encoding  # a file without meta header: what pydicom deduced
    if implicit:
        return str(ImplicitVRLittleEndian)
    return str(ExplicitVRLittleEndian if little in (True, None) else ExplicitVRBigEndian)


def read_header(path: Path, modalities: tuple[str, ...]) -> InstanceHeader:
    """The catalog's fields of one file, or NotIndexed saying why it is left out."""
    try:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
        except InvalidDicomError:
            # Older archives hold files without preamble and meta header: force-read only what starts like a
            # little-endian data set (group 0002 or 0008), never arbitrary files, and require the UIDs below.
            with path.open("rb") as f:
                if f.read(2) not in (b"\x02\x00", b"\x08\x00"):
                    raise NotIndexed("not DICOM (no DICM prefix)") from None
            with warnings.catch_warnings():  # garbage that merely starts like a data set: the skip says enough
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS, force=True)
        sop_uid = str(ds.get("SOPInstanceUID") or "")
        series_uid = str(ds.get("SeriesInstanceUID") or "")
        study_uid = str(ds.get("StudyInstanceUID") or "")
        sop_class = str(ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    except NotIndexed:
        raise
    except Exception as exc:  # any unreadable file is a skip, never a failed scan
        raise NotIndexed(f"not DICOM ({type(exc).__name__}: {exc})") from exc
    if not (sop_uid and series_uid and study_uid):
        raise NotIndexed("not DICOM (no SOP/Series/Study Instance UID)")
    patient_id = str(ds.get("PatientID") or "").strip()
    if not patient_id:
        raise NotIndexed("no PatientID (a patient-level split needs one)")
    modality = str(ds.get("Modality") or "")
    if modalities and modality not in modalities:
        raise NotIndexed(f"modality {modality or 'missing'} not in {','.join(modalities)}")
    if not ds.get("Rows"):
        raise NotIndexed("no image (no Rows)")
    image_type = ds.get("ImageType") or []
    if "LOCALIZER" in [str(v).upper() for v in ([image_type] if isinstance(image_type, str) else image_type)]:
        raise NotIndexed("localizer (scout) image")
    try:
        number = int(ds.InstanceNumber) if ds.get("InstanceNumber") not in (None, "") else None
    except (TypeError, ValueError):
        number = None  # kept, but such a slice cannot be paired
    body_part = str(ds.get("BodyPartExamined") or "").strip().upper() or None
    return InstanceHeader(
        path=str(path.resolve()),
        size=path.stat().st_size,
        patient_id=patient_id,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        sop_class_uid=sop_class,
        transfer_syntax=_transfer_syntax(ds),
        modality=modality,
        description=str(ds.get("SeriesDescription") or ""),
        instance_number=number,
        body_part=body_part,
        exposure_mas=exposure_mas(ds),
        protocol_name=str(ds.get("ProtocolName") or ""),
        ctdivol=ctdivol_mgy(ds),
    )


def archive_files(root: Path) -> list[Path]:
    """Every file under root (or root itself), in a stable order."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"archive root {root} does not exist")
    return sorted(p for p in root.rglob("*") if p.is_file())


def group_series(
    files: list[Path],
    modalities: tuple[str, ...],
    skipped: dict[Path, str],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, SeriesGroup], set[str]]:
    """The indexable files' headers grouped by series, and the SOP Instance UIDs seen; the rest into ``skipped``.

    A duplicate SOPInstanceUID or a series that appears under two patients or studies is skipped, never merged.
    """
    groups: dict[str, SeriesGroup] = {}
    first_path: dict[str, str] = {}
    for done, path in enumerate(files, 1):
        try:
            h = read_header(path, modalities)
            if h.sop_uid in first_path:
                raise NotIndexed(f"duplicate SOPInstanceUID of {first_path[h.sop_uid]}")
            first_path[h.sop_uid] = h.path
            g = groups.get(h.series_uid)
            if g is None:
                g = groups[h.series_uid] = SeriesGroup(
                    h.series_uid, h.patient_id, h.study_uid, h.modality, h.description
                )
            elif (h.patient_id, h.study_uid) != (g.patient_id, g.study_uid):
                why = f"series {h.series_uid} already seen under patient {g.patient_id} / study {g.study_uid}"
                raise NotIndexed(why)
            g.headers.append(h)
        except NotIndexed as why:
            skipped[path] = str(why)
            log.debug("skipped %s: %s", path, why)
        if progress is not None:
            progress(done, len(files))
    return groups, set(first_path)
