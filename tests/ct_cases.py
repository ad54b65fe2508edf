"""The bad-input matrix of docs/conformance.md: one small series (or raw file) per case, and the expected answer.

Each case is a folder of files to send as-is (raw bytes over DIMSE, so broken files stay broken) plus what the
node must answer: the C-STORE status of every instance and the series' end state.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from denoise_harness.enhanced_ct import write_enhanced_ct
from tests.peers import require, write_ct_series

SUCCESS, CANNOT_UNDERSTAND, NOT_MATCH = 0x0000, 0xC000, 0xA900


@dataclass
class Case:
    name: str
    files: list[Path]
    status: int  # C-STORE status expected for every file
    end_state: str | None  # series state expected afterwards (None: nothing is stored)
    derived: int = 0  # derived instances expected when SENT
    reason: str = ""  # text the log line / last_error must contain
    series_uid: str = ""


def _series(directory: Path, count: int = 2, rows: int = 32, columns: int = 32) -> list[Path]:
    return write_ct_series(directory, count, rows=rows, columns=columns)


def _rewrite(paths: list[Path], edit) -> list[Path]:  # noqa: ANN001 - a callable(Dataset, index)
    for i, path in enumerate(paths):
        ds = dcmread(path)
        edit(ds, i)
        ds.save_as(path, enforce_file_format=True)
    return paths


def _uid(paths: list[Path]) -> str:
    return str(dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)


def _pixels(ds: Dataset, array: np.ndarray) -> None:
    ds.Rows, ds.Columns = array.shape
    ds.PixelData = array.tobytes()


def build_cases(root: Path) -> list[Case]:
    """Write every case under root."""
    cases: list[Case] = []

    def add(name: str, files: list[Path], status: int, end: str | None, derived: int = 0, reason: str = "") -> None:
        uid = _uid(files) if end is not None else ""
        cases.append(Case(name, files, status, end, derived, reason, uid))

    # --- accepted and processed ---------------------------------------------------------------------------
    add("plain", _series(root / "plain"), SUCCESS, "SENT", 2)
    for name, syntax in (("rle", RLELossless), ("jpegls", JPEGLSLossless), ("j2k", JPEG2000Lossless)):
        files = _series(root / name)

        def compress(ds: Dataset, i: int, ts: str = syntax) -> None:
            ds.compress(ts)

        add(name, _rewrite(files, compress), SUCCESS, "SENT", 2)
    files = _series(root / "jpeg-lossless")
    for path in files:
        subprocess.run([require("dcmcjpeg"), "+e1", str(path), str(path)], check=True, capture_output=True)
    add("jpeg-lossless", files, SUCCESS, "SENT", 2)
    files = _series(root / "big-endian")
    for path in files:
        subprocess.run([require("dcmconv"), "+tb", str(path), str(path)], check=True, capture_output=True)
    assert str(dcmread(files[0]).file_meta.TransferSyntaxUID) == ExplicitVRBigEndian
    add("big-endian", files, SUCCESS, "SENT", 2)
    add("non-square", _series(root / "non-square", rows=48, columns=80), SUCCESS, "SENT", 2)
    add("256x256", _series(root / "256", rows=256, columns=256), SUCCESS, "SENT", 2)
    add("1024x1024", _series(root / "1024", count=1, rows=1024, columns=1024), SUCCESS, "SENT", 1)

    def slope(ds: Dataset, i: int) -> None:
        ds.RescaleSlope, ds.RescaleIntercept = 0.5, -1024

    add("rescale-slope-0.5", _rewrite(_series(root / "slope"), slope), SUCCESS, "SENT", 2)

    def signed(ds: Dataset, i: int) -> None:
        hu = (np.arange(32 * 32).reshape(32, 32) % 300 - 150).astype(np.int16)
        ds.PixelRepresentation, ds.RescaleIntercept = 1, 0
        _pixels(ds, hu)

    add("signed", _rewrite(_series(root / "signed"), signed), SUCCESS, "SENT", 2)

    def constant(ds: Dataset, i: int) -> None:
        _pixels(ds, np.full((32, 32), 1024, np.uint16))

    add("constant", _rewrite(_series(root / "constant"), constant), SUCCESS, "SENT", 2)

    def mixed(ds: Dataset, i: int) -> None:
        if i == 1:
            _pixels(ds, np.full((48, 40), 1000, np.uint16))

    add("mixed-sizes", _rewrite(_series(root / "mixed"), mixed), SUCCESS, "SENT", 2)

    # --- accepted and skipped with a reason -----------------------------------------------------------------
    def localizer(ds: Dataset, i: int) -> None:
        if i == 0:
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]

    add("localizer-in-series", _rewrite(_series(root / "localizer", 3), localizer), SUCCESS, "SENT", 2)
    reason = "Per-Frame Functional Groups"
    add("enhanced-without-functional-groups", [_enhanced_ct(root / "enhanced")], SUCCESS, "FAILED", 0, reason)

    def frames(ds: Dataset, i: int) -> None:
        ds.NumberOfFrames = 2
        ds.PixelData = ds.PixelData * 2

    add("frames-in-ct-class", _rewrite(_series(root / "frames", 1), frames), SUCCESS, "FAILED", 0, "multi-frame")

    def rgb(ds: Dataset, i: int) -> None:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = np.zeros((32, 32, 3), np.uint8).tobytes()

    add("rgb-ct", _rewrite(_series(root / "rgb", 1), rgb), SUCCESS, "FAILED", 0, "SamplesPerPixel 3")

    def eight_bit(ds: Dataset, i: int) -> None:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = (np.arange(32 * 32) % 251).astype(np.uint8).tobytes()

    files = _rewrite(_series(root / "jpeg-lossy"), eight_bit)
    for path in files:
        subprocess.run([require("dcmcjpeg"), "+eb", str(path), str(path)], check=True, capture_output=True)
        ds = dcmread(path)  # dcmcjpeg marks it DERIVED, which routing would skip: a scanner that sends lossy
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]  # originals (LossyImageCompression 01) reaches the worker
        ds.save_as(path)
    add("jpeg-lossy-8bit", files, SUCCESS, "FAILED", 0, "lossy-compressed source")
    files = _series(root / "deflate")
    for path in files:
        subprocess.run([require("dcmconv"), "+td", str(path), str(path)], check=True, capture_output=True)
    add("deflate", files, SUCCESS, "SENT", 2)
    # An Enhanced CT (multi-frame, VOLUME flavour, functional groups): one derived Enhanced CT object.
    enhanced = write_enhanced_ct(root / "enhanced-ct" / "enh.dcm", 4, rows=32, columns=32)
    add("enhanced-ct", [enhanced], SUCCESS, "SENT", 1)

    # --- rejected -------------------------------------------------------------------------------------------
    def no_pixels(ds: Dataset, i: int) -> None:
        del ds.PixelData

    add("no-pixel-data", _rewrite(_series(root / "nopix", 1), no_pixels), NOT_MATCH, None, reason="no PixelData")

    def no_pixel_module(ds: Dataset, i: int) -> None:
        del ds.BitsAllocated
        del ds.Rows

    files = _rewrite(_series(root / "nomodule", 1), no_pixel_module)
    add("missing-pixel-module-tags", files, CANNOT_UNDERSTAND, None, reason="image pixel module incomplete")

    files = _series(root / "sopmismatch", 1)
    for path in files:  # MR Image Storage in the data set, CT in the file meta (and so in the context it is sent on)
        ds = dcmread(path)
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.save_as(path, enforce_file_format=False)
    assert str(dcmread(files[0]).file_meta.MediaStorageSOPClassUID) != str(dcmread(files[0]).SOPClassUID)
    add("sop-class-mismatch", files, NOT_MATCH, None, reason="does not match the presentation context")

    def traversal(ds: Dataset, i: int) -> None:
        ds.SeriesInstanceUID = "../../etc"

    add("path-traversal-uid", _rewrite(_series(root / "trav", 1), traversal), CANNOT_UNDERSTAND, None, reason="UID")

    def bad_uid(ds: Dataset, i: int) -> None:
        ds.SOPInstanceUID = "1.2.03.abc"
        ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"

    add("invalid-uid", _rewrite(_series(root / "baduid", 1), bad_uid), CANNOT_UNDERSTAND, None, reason="UID")
    (src,) = _series(root / "trunc", 1, rows=64, columns=64)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) - 3000])
    add("truncated", [src], CANNOT_UNDERSTAND, None, reason="truncated")
    (src,) = _series(root / "notdicom", 1)
    meta_end = _meta_end(src)
    src.write_bytes(src.read_bytes()[:meta_end] + b"this is not a DICOM data set \xff\xfe" * 40)
    add("not-dicom", [src], CANNOT_UNDERSTAND, None, reason="not a DICOM data set")
    return cases


def _meta_end(path: Path) -> int:
    """Byte offset where the data set starts (after preamble, DICM and the file meta group)."""
    data = path.read_bytes()
    length = int.from_bytes(data[140:144], "little")  # (0002,0000) value: group length after it
    return 144 + length


def _enhanced_ct(directory: Path) -> Path:
    """Enhanced CT's SOP class on a single-frame CT's attributes (no functional groups place its 2 frames):
    accepted by the SCP, not denoised (skipped with the reason)."""
    (src,) = write_ct_series(directory, 1)
    ds = dcmread(src)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(src, enforce_file_format=True)
    return src
