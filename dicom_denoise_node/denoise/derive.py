"""④ The derived-series writer: what a PACS and a radiologist expect of a denoised CT series.

Same patient and study; a new series whose UIDs are deterministic functions of the source UIDs and the model
version (a retry re-sends the same instances, never a second series); ImageType DERIVED\\SECONDARY; descriptions
that say what was done; SourceImageSequence per slice; geometry and FrameOfReferenceUID kept; pixel values
written back in HU through the source's rescale and pixel representation; Contributing Equipment naming the model.
"""

from __future__ import annotations

import copy
import io
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from dicom_denoise_node import __version__
from dicom_denoise_node.config import DeriveSettings
from dicom_denoise_node.denoise.naming import series_description, series_number, source_series_number
from dicom_denoise_node.model.registry import MODEL_KINDS

log = logging.getLogger(__name__)

# Elements that describe the source's pixel encoding or values and would be wrong on the derived image.
_DROP = (
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
    "IconImageSequence",
    "DataSetTrailingPadding",
)
SOURCE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")
PROCESSING_EQUIPMENT = ("109102", "DCM", "Processing Equipment")


@dataclass(frozen=True)
class DerivationInfo:
    """What the derived series says about how it was made."""

    model_name: str
    model_version: str
    settings: DeriveSettings
    strength: float = 1.0
    self_ensemble: int = 1
    model_kind: str = MODEL_KINDS["unpaired"]  # ModelInfo.kind: CycleGAN or paired, from the model's metadata
    noise_conditioned: bool = False  # ModelInfo.noise_conditioning: said in the description, never in the UIDs
    target_noise_hu: float = 0.0  # denoise/noise_target.py; 0 = none (the strength alone)
    model_notice: str = ""  # ModelInfo.default_notice: the notice unless [derive] notice is set
    short_kind: str = "CycleGAN"  # ModelInfo.short_kind, for the SeriesDescription's {kind}
    named_model: bool = False  # a routing rule chose the model by name: the name joins the UIDs' key
    rule: str = ""  # the routing rule this derivation is for ("" = none: `denoise-node denoise`)
    variant: int = 0  # which derivation of its source series (store/catalog/derivations.py): its SeriesNumber

    @property
    def uid_key(self) -> str:
        """What the deterministic UIDs depend on besides the source: the model version, and the strength and
        self-ensemble when they are not 1 (full strength, one pass keeps the UIDs of earlier releases; another
        setting is another series), and the model's name when a rule chose it."""
        model = self.model_name if self.named_model else ""
        return derivation_key(self.model_version, self.strength, self.self_ensemble, self.target_noise_hu, model)

    @property
    def notice(self) -> str:
        """``[derive] notice`` when set (even to ""), else the model's own (a simulated-data model's warning)."""
        return self.model_notice if self.settings.notice is None else self.settings.notice

    @property
    def level(self) -> str:
        """The blend, short: ``s0.5`` (a strength) or ``n12HU`` (a noise target)."""
        return f"n{self.target_noise_hu:g}HU" if self.target_noise_hu else f"s{self.strength:g}"

    def description_values(self) -> dict[str, str]:
        """The SeriesDescription template's placeholders but {source} (config/sections.py DESCRIPTION_FIELDS)."""
        return {
            "model": self.model_name,
            "version": self.model_version,
            "kind": self.short_kind,
            "strength": f"{self.strength:g}",
            "noise": f"{self.target_noise_hu:g}" if self.target_noise_hu else "",
            "level": self.level,
            "ensemble": str(self.self_ensemble),
        }

    def series_description(self, source: Dataset, suffix: str = "") -> str:
        """The derived (with ``suffix``: the report's) SeriesDescription, 64 characters at most."""
        text = str(source.get("SeriesDescription", "") or "CT")
        return series_description(self.settings.series_description, self.description_values(), text, suffix)

    def series_number(self, source: Dataset, report: bool = False) -> int:
        """The derived (with ``report``: the report's) SeriesNumber: never the same as another derivation's."""
        number = source_series_number(source.get("SeriesNumber"))
        return series_number(number, self.settings.series_number_offset, self.variant, report)

    @property
    def description(self) -> str:
        averaged = f", averaged over {self.self_ensemble} flips/turns" if self.self_ensemble > 1 else ""
        if self.noise_conditioned:
            averaged += ", given the noise level measured on each source slice"
        level = (
            f"blended to leave about {self.target_noise_hu:g} HU of noise"
            if self.target_noise_hu
            else f"at strength {self.strength:g}"
        )
        rule = f" for routing rule {self.rule}" if self.rule else ""
        text = (
            f"Noise reduction by {self.model_kind} {self.model_name} {self.model_version} "
            f"{level}{rule} (dicom-denoise-node {__version__}), applied tile by tile{averaged} to the source slice"
        )
        if self.notice:
            text += f". {self.notice}"
        return text[:1024]


_UID_NAMESPACE = uuid.UUID("6f1c2a4e-3b0d-5e57-9d7a-0de0c0de0001")


def deterministic_uid(*parts: str) -> str:
    """A 2.25 UID (PS3.5 B.2) from a name-based UUID: the same inputs always give the same UID."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(0).join(parts)).int}"


def derivation_key(
    model_version: str,
    strength: float = 1.0,
    self_ensemble: int = 1,
    target_noise_hu: float = 0.0,
    model_name: str = "",
) -> str:
    """The model version, plus the strength and self-ensemble when not 1, the noise target when set and the model's
    name when a routing rule chose it: the key of every deterministic derived UID."""
    key = model_version if strength == 1.0 else f"{model_version}@strength={strength:g}"
    key = key if self_ensemble == 1 else f"{key}@ensemble={self_ensemble}"
    key = key if not target_noise_hu else f"{key}@noise={target_noise_hu:g}"
    return key if not model_name else f"{key}@model={model_name}"


def derived_series_uid(source_series_uid: str, key: str) -> str:
    """Deterministic: the same source series through the same derivation (``key``: :func:`derivation_key`) always
    gives the same series UID."""
    return deterministic_uid("series", source_series_uid, key)


def derived_sop_uid(source_sop_uid: str, key: str) -> str:
    return deterministic_uid("sop", source_sop_uid, key)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def stored_range(bits_stored: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    return 0, (1 << bits_stored) - 1


def hu_to_stored(hu: np.ndarray, source: Dataset) -> np.ndarray:
    """HU → stored values through the source's rescale and pixel representation, clipped to BitsStored."""
    slope = float(source.get("RescaleSlope", 1) or 1)
    intercept = float(source.get("RescaleIntercept", 0) or 0)
    signed = int(source.get("PixelRepresentation", 0)) == 1
    bits_stored = int(source.get("BitsStored", 16))
    lo, hi = stored_range(bits_stored, signed)
    stored = np.rint((hu.astype(np.float64) - intercept) / slope)
    return np.clip(stored, lo, hi).astype(np.int16 if signed else np.uint16)


def derive_instance(
    source: Dataset,
    hu: np.ndarray,
    series_uid: str,
    info: DerivationInfo,
    now: datetime | None = None,
    comment: str | None = None,
) -> Dataset:
    """Build the derived instance of one source slice from its denoised HU image (``comment``: the guard's flag,
    added to ImageComments after the site notice)."""
    if hu.shape != (int(source.Rows), int(source.Columns)):
        raise ValueError(f"denoised image {hu.shape} does not match the source {source.Rows}x{source.Columns}")
    now = now or datetime.now(UTC)
    ds = Dataset()
    for elem in source:
        if elem.tag.is_private or elem.keyword in _DROP or elem.tag.group in (0x0002, 0xFFFC):
            continue
        ds.add(copy.deepcopy(elem))  # assignments below must never write through to the source
    ds.ContributingEquipmentSequence = Sequence(list(ds.get("ContributingEquipmentSequence", [])))

    version = info.uid_key
    ds.SOPInstanceUID = derived_sop_uid(str(source.SOPInstanceUID), version)
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = info.series_number(source)
    ds.SeriesDescription = info.series_description(source)
    image_type = list(source.get("ImageType", ["ORIGINAL", "PRIMARY", "AXIAL"]))
    ds.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]] if len(image_type) > 2 else ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = info.description

    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ref.PurposeOfReferenceCodeSequence = [_code(*SOURCE_PURPOSE)]
    ds.SourceImageSequence = [ref]

    equipment = Dataset()
    equipment.Manufacturer = info.settings.manufacturer
    if info.settings.institution_name:
        equipment.InstitutionName = info.settings.institution_name
    equipment.ManufacturerModelName = info.model_name[:64]
    equipment.SoftwareVersions = [f"dicom-denoise-node {__version__}"[:64], f"model {version}"[:64]]
    equipment.ContributionDateTime = now.strftime("%Y%m%d%H%M%S.%f+0000")
    equipment.ContributionDescription = f"Denoised with {info.model_name} {version}"[:64]
    equipment.PurposeOfReferenceCodeSequence = [_code(*PROCESSING_EQUIPMENT)]
    ds.ContributingEquipmentSequence.append(equipment)

    comments = [c for c in (info.notice, comment) if c]
    if comments:
        ds.ImageComments = " ".join(comments)[:10240]
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SeriesDate, ds.SeriesTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.ContentDate, ds.ContentTime = ds.InstanceCreationDate, ds.InstanceCreationTime

    pixels = hu_to_stored(hu, source)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = int(source.get("BitsStored", 16))
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(source.get("PixelRepresentation", 0))
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    if "NumberOfFrames" in ds:
        del ds.NumberOfFrames

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"DENOISE_{__version__}"[:16]
    ds.file_meta = meta
    return ds


def encode(ds: Dataset) -> bytes:
    """The Part 10 file bytes of a derived dataset (Explicit VR Little Endian)."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
