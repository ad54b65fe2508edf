"""An Enhanced CT Image (multi-frame) built to the standard (PS3.3 A.38), as a scanner such as a Siemens NAEOTOM or
a Philips Spectral sends it: Shared and Per-Frame Functional Groups, a Multi-frame Dimension module, Enhanced General
Equipment, the VOLUME image flavour, a CT Image Frame Type per frame. ``dciodvfy`` reports no error on it.

The pixels are a body (an ellipse of soft tissue with a denser insert) in air with Gaussian noise, so a denoiser has
something to change; each frame may carry its own rescale (Pixel Value Transformation per frame).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

from denoise_harness.net import StrPath

SPACING_MM = 0.7
THICKNESS_MM = 1.0
ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def body_hu(frames: int, rows: int, columns: int, noise_hu: float = 25.0, seed: int = 0) -> np.ndarray:
    """HU volume (frames, rows, columns): air, a soft-tissue ellipse with a denser insert, Gaussian noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    y, x = (y - rows / 2) / (rows * 0.42), (x - columns / 2) / (columns * 0.45)
    body = np.where(x * x + y * y <= 1.0, 40.0, -1000.0).astype(np.float32)
    body[(x - 0.3) ** 2 + y * y <= 0.02] = 300.0
    volume = np.repeat(body[None], frames, axis=0)
    volume += rng.normal(0.0, noise_hu, volume.shape).astype(np.float32)
    return volume


def _shared_groups(frame_uid: str) -> Dataset:
    shared = Dataset()
    shared.PixelMeasuresSequence = hd.PixelMeasuresSequence((SPACING_MM, SPACING_MM), THICKNESS_MM, THICKNESS_MM)
    shared.PlaneOrientationSequence = hd.PlaneOrientationSequence("PATIENT", ORIENTATION)
    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = [_code("818981001", "SCT", "Abdomen")]
    anatomy.FrameLaterality = "U"
    shared.FrameAnatomySequence = [anatomy]
    acquisition_type = Dataset()
    acquisition_type.AcquisitionType = "SPIRAL"
    acquisition_type.ConstantVolumeFlag = "NO"
    acquisition_type.FluoroscopyFlag = "NO"
    shared.CTAcquisitionTypeSequence = [acquisition_type]
    details = Dataset()
    details.RotationDirection, details.RevolutionTime = "CW", 0.5
    details.SingleCollimationWidth, details.TotalCollimationWidth = 0.6, 38.4
    details.TableHeight, details.GantryDetectorTilt = 150.0, 0.0
    details.DataCollectionDiameter = 500.0
    shared.CTAcquisitionDetailsSequence = [details]
    dynamics = Dataset()
    dynamics.TableSpeed, dynamics.TableFeedPerRotation, dynamics.SpiralPitchFactor = 46.0, 23.0, 0.6
    shared.CTTableDynamicsSequence = [dynamics]
    geometry = Dataset()
    geometry.DistanceSourceToDetector, geometry.DistanceSourceToDataCollectionCenter = 1085.6, 595.0
    shared.CTGeometrySequence = [geometry]
    reconstruction = Dataset()
    reconstruction.ReconstructionAlgorithm, reconstruction.ConvolutionKernel = "ITERATIVE", "Br40"
    reconstruction.ConvolutionKernelGroup = "SOFT_TISSUE"
    reconstruction.ReconstructionDiameter = SPACING_MM * 512
    reconstruction.ReconstructionPixelSpacing = [SPACING_MM, SPACING_MM]
    reconstruction.ReconstructionAngle = 360.0
    reconstruction.ImageFilter = "NONE"
    shared.CTReconstructionSequence = [reconstruction]
    exposure = Dataset()
    exposure.ExposureTimeInms, exposure.XRayTubeCurrentInmA = 500.0, 60.0
    exposure.ExposureInmAs, exposure.ExposureModulationType = 30.0, "NONE"
    exposure.CTDIvol = 2.1
    exposure.CTDIPhantomTypeCodeSequence = [_code("113691", "DCM", "IEC Body Dosimetry Phantom")]
    shared.CTExposureSequence = [exposure]
    xray = Dataset()
    xray.KVP, xray.FocalSpots, xray.FilterType, xray.FilterMaterial = 120, [1.2], "FLAT", ["COPPER"]
    shared.CTXRayDetailsSequence = [xray]
    irradiation = Dataset()
    irradiation.IrradiationEventUID = generate_uid()
    shared.IrradiationEventIdentificationSequence = [irradiation]
    frame_type = Dataset()
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    frame_type.PixelPresentation, frame_type.VolumetricProperties = "MONOCHROME", "VOLUME"
    frame_type.VolumeBasedCalculationTechnique = "NONE"
    shared.CTImageFrameTypeSequence = [frame_type]
    return shared


def _per_frame(index: int, z_mm: float, rescale: tuple[float, float]) -> Dataset:
    item = Dataset()
    content = Dataset()
    content.FrameAcquisitionNumber = 1
    content.FrameReferenceDateTime = content.FrameAcquisitionDateTime = "20240101120000.000000"
    content.FrameAcquisitionDuration = 500.0
    content.DimensionIndexValues = [1, index + 1]
    content.StackID, content.InStackPositionNumber = "1", index + 1
    item.FrameContentSequence = [content]
    position = (-SPACING_MM * 256, -SPACING_MM * 256, z_mm)
    item.PlanePositionSequence = hd.PlanePositionSequence("PATIENT", position)
    ct_position = Dataset()
    ct_position.TablePosition = z_mm
    ct_position.ReconstructionTargetCenterPatient = [0.0, 0.0, z_mm]
    ct_position.DataCollectionCenterPatient = [0.0, 0.0, z_mm]
    item.CTPositionSequence = [ct_position]
    transformation = Dataset()
    transformation.RescaleSlope, transformation.RescaleIntercept = rescale
    transformation.RescaleType = "HU"
    item.PixelValueTransformationSequence = [transformation]
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = 40.0, 400.0
    item.FrameVOILUTSequence = [voi]
    return item


def _dimensions(dimension_uid: str) -> tuple[list[Dataset], list[Dataset]]:
    organization = Dataset()
    organization.DimensionOrganizationUID = dimension_uid
    indices = []
    for pointer, group, label in (
        (0x00209056, 0x00209111, "Stack ID"),  # StackID in the Frame Content Sequence
        (0x00209057, 0x00209111, "In-Stack Position Number"),
    ):
        index = Dataset()
        index.DimensionOrganizationUID = dimension_uid
        index.DimensionIndexPointer, index.FunctionalGroupPointer = pointer, group
        index.DimensionDescriptionLabel = label
        indices.append(index)
    return [organization], indices


def write_enhanced_ct(
    path: StrPath,
    frames: int = 4,
    *,
    rows: int = 64,
    columns: int = 64,
    rescales: Sequence[tuple[float, float]] | None = None,
    hu: np.ndarray | None = None,
    study_uid: str | None = None,
) -> Path:
    """Write one Enhanced CT Image Storage file of ``frames`` frames and return its path.

    ``rescales``: (slope, intercept) per frame (default (1, -1024) for each); ``hu``: the HU volume to store
    (default :func:`body_hu`), rounded through each frame's rescale into unsigned 12-bit stored values.
    """
    rescales = list(rescales or [(1.0, -1024.0)] * frames)
    hu = body_hu(frames, rows, columns) if hu is None else hu
    assert len(rescales) == frames and hu.shape == (frames, rows, columns)
    sop_uid, frame_uid, dimension_uid = generate_uid(), generate_uid(), generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = EnhancedCTImageStorage, sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedCTImageStorage, sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = "20240101", "120000"
    # Patient, General Study, Patient Study
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Enhanced^Test", "ENH-TEST", "", "O"
    ds.StudyInstanceUID, ds.StudyID, ds.AccessionNumber = study_uid or generate_uid(), "1", ""
    ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = "20240101", "120000", ""
    # General Series, CT Series, Frame of Reference, Synchronization-free
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = generate_uid(), 3, "CT"
    ds.SeriesDescription, ds.ProtocolName = "Abdomen LD 1.0 Br40", "Abdomen low dose"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
    # Enhanced General Equipment
    ds.Manufacturer, ds.ManufacturerModelName = "Test Scanner Co", "Photon 1"
    ds.DeviceSerialNumber, ds.SoftwareVersions = "0001", "VA50"
    # Enhanced CT Image
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.PixelPresentation, ds.VolumetricProperties, ds.VolumeBasedCalculationTechnique = "MONOCHROME", "VOLUME", "NONE"
    ds.AcquisitionNumber, ds.AcquisitionDateTime, ds.AcquisitionDuration = 1, "20240101120000.000000", 5.0
    ds.ContentQualification, ds.BurnedInAnnotation, ds.LossyImageCompression = "PRODUCT", "NO", "00"
    ds.RecognizableVisualFeatures, ds.PresentationLUTShape = "NO", "IDENTITY"
    ds.IsocenterPosition = [0.0, 0.0, 0.0]
    # Image Pixel
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    # Multi-frame Functional Groups, Multi-frame Dimension, Acquisition Context
    ds.InstanceNumber, ds.ContentDate, ds.ContentTime = 1, "20240101", "120000"
    ds.NumberOfFrames = frames
    ds.SharedFunctionalGroupsSequence = [_shared_groups(frame_uid)]
    ds.PerFrameFunctionalGroupsSequence = [_per_frame(i, -THICKNESS_MM * i, rescales[i]) for i in range(frames)]
    ds.DimensionOrganizationSequence, ds.DimensionIndexSequence = _dimensions(dimension_uid)
    ds.DimensionOrganizationType = "3D"
    ds.AcquisitionContextSequence = []
    stored = np.empty(hu.shape, np.uint16)
    for i, (slope, intercept) in enumerate(rescales):
        stored[i] = np.clip(np.rint((hu[i] - intercept) / slope), 0, 4095)
    ds.PixelData = stored.tobytes()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out
