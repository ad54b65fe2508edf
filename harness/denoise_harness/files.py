"""Test CT series written as real DICOM files, and reading their UIDs."""

from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from denoise_harness.net import StrPath


def write_ct_series(
    directory: StrPath,
    count: int = 3,
    *,
    rows: int = 16,
    columns: int = 16,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> list[Path]:
    """Write ``count`` small valid CT Image Storage files (Explicit VR Little Endian, uint16) and return them.

    The files pass ``dciodvfy`` without errors; names are ``ct0000.dcm``, ``ct0001.dcm``, ...
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    paths = []
    for index in range(count):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Peer^Test", "PEER-TEST", "", "O"
        ds.StudyInstanceUID, ds.StudyID, ds.AccessionNumber = study_uid, "1", ""
        ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = "20240101", "120000", ""
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = series_uid, 1, "CT"
        ds.PatientPosition, ds.BodyPartExamined, ds.Manufacturer = "HFS", "ABDOMEN", ""
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
        ds.InstanceNumber, ds.AcquisitionNumber = index + 1, 1
        ds.ContentDate, ds.ContentTime = "20240101", "120000"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [0.0, 0.0, float(index)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness, ds.KVP = [0.5, 0.5], 1.0, 120
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = rows, columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        pixels = (np.arange(rows * columns, dtype=np.uint32) * 7 + 900 + 10 * index) % 4096
        ds.PixelData = pixels.astype(np.uint16).tobytes()
        path = out / f"ct{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def j2k_noise_slice(directory: StrPath, size: int) -> Path:
    """One JPEG 2000 lossless CT slice of ``size``² uniform noise: slow to decode (about 1 s at 2048² on the 2-core
    dev machine), for tests of what a slow or dying decoder does."""
    (path,) = write_ct_series(directory, 1, rows=size, columns=size)
    ds = dcmread(path)
    ds.PixelData = np.random.default_rng(0).integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
    ds.compress(JPEG2000Lossless)
    ds.save_as(path)
    return path


def sop_instance_uid(path: StrPath) -> str:
    """SOP Instance UID of a DICOM file."""
    return str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
