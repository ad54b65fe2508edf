"""The demo's PACS: Orthanc when installed (REST to fetch the derived series, web explorer for people), otherwise
the in-process folder receiver."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from pydicom import dcmread

import denoise_harness as peers
from denoise_demo.receiver import FolderPACS

PACS_AET = "PACS"


class PACSError(RuntimeError):
    """The PACS cannot be started (not installed, port busy)."""


def check_port(port: int, what: str) -> None:
    """Fail early, naming the port, when a fixed port is already taken."""
    if port and peers.port_open(port):
        raise PACSError(f"{what}: port {port} on {peers.LOOPBACK} is busy (choose another or free it)")


class DemoPACS:
    """Orthanc (REST to fetch the derived series, web explorer for people) or the folder receiver."""

    def __init__(self, kind: str, base_dir: Path, dicom_port: int, http_port: int) -> None:
        self.kind = kind
        self.base_dir = base_dir
        self.orthanc: peers.Orthanc | None = None
        self.folder: FolderPACS | None = None
        if kind == "orthanc":
            overrides: dict[str, Any] = {"OrthancExplorerEnabled": True, "Name": "denoise-node demo PACS"}
            if dicom_port:
                overrides["DicomPort"] = dicom_port
            if http_port:
                overrides["HttpPort"] = http_port
            self.orthanc = peers.Orthanc(base_dir, aet=PACS_AET, config_overrides=overrides)
        else:
            self.folder = FolderPACS(base_dir / "received", PACS_AET, peers.LOOPBACK, dicom_port)

    @property
    def name(self) -> str:
        return "Orthanc" if self.orthanc is not None else "folder receiver (pynetdicom)"

    @property
    def dicom_port(self) -> int:
        return self.orthanc.dicom_port if self.orthanc is not None else self.folder.port  # type: ignore[union-attr]

    @property
    def url(self) -> str:
        return f"{self.orthanc.url}/app/explorer.html" if self.orthanc is not None else str(self.folder.out_dir)  # type: ignore[union-attr]

    def start(self) -> None:
        if self.orthanc is not None:
            check_port(self.orthanc.dicom_port, "PACS")
            check_port(self.orthanc.http_port, "PACS")
            self.orthanc.start(timeout=60)
        else:
            assert self.folder is not None
            check_port(self.folder.port, "PACS")
            self.folder.start()

    def stop(self) -> None:
        if self.orthanc is not None:
            self.orthanc.stop()
        if self.folder is not None:
            self.folder.stop()

    def count(self, series_uid: str) -> int:
        """Instances of the series stored so far."""
        if self.orthanc is not None:
            found = self.orthanc.find_series_by_uid(series_uid)
            return 0 if found is None else len(found["Instances"])
        return len(self._folder_files(series_uid))

    def datasets(self, series_uid: str) -> list[Any]:
        """The stored instances of the series, as pydicom datasets."""
        if self.orthanc is not None:
            found = self.orthanc.find_series_by_uid(series_uid)
            ids = [] if found is None else found["Instances"]
            return [dcmread(io.BytesIO(self.orthanc.instance_file(i))) for i in ids]
        return [dcmread(p) for p in self._folder_files(series_uid)]

    def _folder_files(self, series_uid: str) -> list[Path]:
        assert self.folder is not None
        out = []
        for path in self.folder.files():
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
            if str(ds.SeriesInstanceUID) == series_uid:
                out.append(path)
        return out


def choose_pacs(kind: str) -> str:
    if kind == "orthanc" and peers.find_program("Orthanc") is None:
        raise PACSError("Orthanc is not installed (Debian package orthanc); use --pacs folder")
    if kind == "auto":
        return "orthanc" if peers.find_program("Orthanc") is not None else "folder"
    return kind
