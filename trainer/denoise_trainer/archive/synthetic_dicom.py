"""The DICOM of a synthetic archive: patient and study attributes, and one CT Image Storage instance per slice
with consistent dose, geometry and pixel tags (stored = HU + 1024 in 12 bits, as a scanner writes them).

Every UID is a deterministic function of the seed and what it names, so an archive can be made again exactly.
"""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from denoise_trainer.archive.fanbeam import FanGeometry
from denoise_trainer.archive.kernels import KERNELS
from denoise_trainer.archive.protocol import CTDI_PER_MAS, EXPOSURE_TIME_MS, SeriesSpec

log = logging.getLogger(__name__)

MANUFACTURER = "dicom-denoise-node synthetic"
HU_OFFSET = 1024  # stored = HU + 1024, RescaleIntercept −1024
BITS_STORED = 12
_UID_ROOT = "dicom-denoise-node-synth"


def synthetic_uid(*parts: object) -> str:
    """Deterministic UID from the seed and what the UID names (reproducible archives)."""
    return generate_uid(entropy_srcs=[_UID_ROOT, *(str(p) for p in parts)])


def patient_header(rng: np.random.Generator, index: int, body_part: str, *, ood: bool = False) -> Dataset:
    """Patient and study level attributes, shared by the three series (``ood``: SYNTHOOD… IDs, other patients)."""
    ds = Dataset()
    number = index + 1
    study_date = dt.date(2020, 1, 1) + dt.timedelta(days=int(rng.integers(0, 5 * 365)))
    age = int(rng.integers(35, 85))
    birth = study_date - dt.timedelta(days=age * 365 + int(rng.integers(0, 365)))
    seconds = int(rng.integers(7 * 3600, 18 * 3600))
    ds.PatientName = f"SYNTH^{'OOD' if ood else 'P'}{number:04d}"
    ds.PatientID = f"SYNTH{'OOD' if ood else ''}{number:04d}"
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = str(rng.choice(["F", "M"]))
    ds.PatientAge = f"{age:03d}Y"
    ds.StudyDate = study_date.strftime("%Y%m%d")
    ds.StudyTime = f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"
    ds.AccessionNumber = f"SYN{number:06d}"
    ds.StudyID = f"{number}"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"CT {body_part.upper()} synthetic LD/HD"
    ds.BodyPartExamined = body_part.upper()
    return ds


def slice_dataset(
    header: Dataset,
    spec: SeriesSpec,
    pixels_hu: np.ndarray,
    *,
    seed: int | str,
    instance: int,
    z_mm: float,
    pixel_spacing: float,
    thickness: float,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    body_part: str,
    window: str,
    fan: FanGeometry | None = None,
) -> Dataset:
    """One CT Image Storage instance (Explicit VR Little Endian) with consistent dose and geometry tags; a fan-beam
    acquisition names its distances (the default is the parallel-beam simulator's)."""
    sop_uid = synthetic_uid(seed, header.PatientID, spec.kind, instance)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.update(header)
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = header.StudyDate
    series_time = dt.datetime.strptime(header.StudyTime, "%H%M%S") + dt.timedelta(minutes=spec.number)
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = series_time.strftime("%H%M%S")
    ds.Modality = "CT"
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = "Synthetic"
    ds.ManufacturerModelName = "parallel-beam FBP simulator"
    if fan is not None:
        ds.ManufacturerModelName = f"fan-beam FBP simulator ({fan.name}, rebinned)"
        ds.DistanceSourceToDetector = f"{fan.source_detector_mm:g}"
        ds.DistanceSourceToPatient = f"{fan.source_isocentre_mm:g}"
    ds.SoftwareVersions = "trainer.synth 1"
    ds.SeriesDescription = spec.description
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = spec.number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    _acquisition_tags(ds, spec, pixels_hu.shape[0], pixel_spacing, thickness, window)
    _image_tags(ds, pixels_hu.shape[0], z_mm, pixel_spacing, body_part)
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    stored = np.clip(np.rint(pixels_hu + HU_OFFSET), 0, (1 << BITS_STORED) - 1).astype("<u2")
    ds.PixelData = stored.tobytes()
    return ds


def _acquisition_tags(
    ds: Dataset, spec: SeriesSpec, n: int, pixel_spacing: float, thickness: float, window: str
) -> None:
    """Acquisition and reconstruction: kVp, thickness, field of view, kernel, and the dose (not for REF)."""
    ds.ScanOptions = "AXIAL"
    ds.KVP = 120
    ds.SliceThickness = f"{thickness:g}"
    ds.SpacingBetweenSlices = f"{thickness:g}"
    ds.DataCollectionDiameter = 500
    ds.ReconstructionDiameter = f"{n * pixel_spacing:.2f}"
    ds.GantryDetectorTilt = 0
    ds.RotationDirection = "CW"
    ds.ConvolutionKernel = KERNELS[window].dicom_name if window in KERNELS else window.upper()
    if spec.mas is not None:
        ds.ExposureTime = EXPOSURE_TIME_MS
        ds.XRayTubeCurrent = int(round(spec.mas / (EXPOSURE_TIME_MS / 1000.0)))
        ds.Exposure = int(round(spec.mas))
        ds.CTDIvol = round(spec.mas * CTDI_PER_MAS, 3)
        phantom = Dataset()
        phantom.CodeValue, phantom.CodingSchemeDesignator = "113691", "DCM"
        phantom.CodeMeaning = "IEC Body Dosimetry Phantom"
        ds.CTDIPhantomTypeCodeSequence = [phantom]


def _image_tags(ds: Dataset, n: int, z_mm: float, pixel_spacing: float, body_part: str) -> None:
    """Image plane (centred on the isocentre), pixel format and the body part's display windows."""
    first = -(n - 1) / 2.0 * pixel_spacing
    ds.ImagePositionPatient = [f"{first:.4f}", f"{first:.4f}", f"{z_mm:.4f}"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = f"{z_mm:.4f}"
    ds.PixelSpacing = [f"{pixel_spacing:.6g}", f"{pixel_spacing:.6g}"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = n
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -HU_OFFSET
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    if body_part == "chest":
        ds.WindowCenter, ds.WindowWidth = [40, -600], [400, 1500]
        ds.WindowCenterWidthExplanation = ["MEDIASTINUM", "LUNG"]
    else:
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.WindowCenterWidthExplanation = "ABDOMEN"
