"""Real DICOM peers for tests: dcmtk storescp/storescu/echoscu, Orthanc (from ``demo.peers``) and dciodvfy.

Everything talks DIMSE over 127.0.0.1 only. Fixtures skip the test when their peer is not installed
(``make test`` installs them). Fixtures are found by name in the test module; binding them there keeps ruff
quiet (a parameter named like an imported fixture is F811)::

    from tests import peers

    dcmtk_pacs = peers.dcmtk_pacs
    orthanc_pacs = peers.orthanc_pacs
"""

import contextlib
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from demo import peers as _peers
from demo.peers import (  # noqa: F401  (re-exported for the tests)
    LOOPBACK,
    Modality,
    Orthanc,
    OrthancHTTPError,
    PeerMissing,
    StoreSCP,
    StrPath,
    echoscu,
    file_syntax_profile,
    find_program,
    free_port,
    listens,
    peer_env,
    pid_alive,
    port_open,
    sop_instance_uid,
    stop_process,
    storescu,
    wait_for_port,
    wait_until,
)


def require(binary: str) -> str:
    """Return the full path of ``binary``; skip the calling test when it is not installed."""
    try:
        return _peers.require(binary)
    except _peers.PeerMissing as exc:
        pytest.skip(str(exc))


# ----------------------------------------------------------------------------------------- test data


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


def dciodvfy(path: StrPath) -> tuple[list[str], list[str]]:
    """Run dicom3tools ``dciodvfy`` on a file; return its ``(errors, warnings)`` lines (skips if missing)."""
    exe = require("dciodvfy")
    result = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stderr + "\n" + result.stdout).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def storescp_factory(tmp_path: Path) -> Iterator[Callable[..., StoreSCP]]:
    """Start :class:`StoreSCP` peers (``factory(ae_title="PACS2", ...)``); all are stopped on teardown."""
    require("storescp")
    with contextlib.ExitStack() as stack:
        count = 0

        def make(ae_title: str = "PACS", port: int | None = None, extra_args: Sequence[str] = ()) -> StoreSCP:
            nonlocal count
            count += 1
            scp = StoreSCP(tmp_path / f"storescp{count}", ae_title, port, extra_args)
            stack.callback(scp.stop)
            scp.start()
            return scp

        yield make


@pytest.fixture
def dcmtk_pacs(storescp_factory: Callable[..., StoreSCP]) -> StoreSCP:
    """A running dcmtk storescp with AE title ``PACS`` on a free loopback port."""
    return storescp_factory("PACS")


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """Start :class:`Orthanc` peers (``factory(modalities={...}, aet=...)``); all are stopped on teardown."""
    require("Orthanc")
    with contextlib.ExitStack() as stack:
        count = 0

        def make(modalities: Mapping[str, Modality] | None = None, **kwargs: Any) -> Orthanc:
            nonlocal count
            count += 1
            orthanc = Orthanc(tmp_path / f"orthanc{count}", modalities, **kwargs)
            stack.callback(orthanc.stop)
            orthanc.start()
            return orthanc

        yield make


@pytest.fixture
def orthanc_pacs(request: pytest.FixtureRequest, orthanc_factory: Callable[..., Orthanc]) -> Orthanc:
    """A running Orthanc (AET ``ORTHANC``); modalities from indirect parametrization, if any."""
    return orthanc_factory(getattr(request, "param", None))
