"""Orthanc as the PACS: a private instance with its own storage, index, HTTP and DICOM ports, optionally with its
DICOMweb plugin (STOW-RS) and HTTP basic auth."""

import base64
import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from denoise_harness.net import (
    LOOPBACK,
    ChildProcess,
    PeerMissing,
    StrPath,
    free_port,
    peer_env,
    require,
    stop_process,
    tail_text,
    wait_until,
)

Modality = Sequence[str | int] | Mapping[str, Any]
# Debian's orthanc-dicomweb links the versioned library here (`dpkg -L orthanc-dicomweb`).
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB_ROOT = "/dicom-web"


def dicomweb_plugin() -> str:
    """Path of Orthanc's DICOMweb plugin; raise :class:`PeerMissing` naming the Debian package when absent."""
    if not DICOMWEB_PLUGIN.exists():
        raise PeerMissing(f"Orthanc's DICOMweb plugin {DICOMWEB_PLUGIN} is missing (Debian package orthanc-dicomweb)")
    return str(DICOMWEB_PLUGIN)


class OrthancHTTPError(RuntimeError):
    """An Orthanc REST call answered with an HTTP error status."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> HTTP {status}: {body}")
        self.status = status
        self.body = body


class Orthanc(ChildProcess):
    """A private Orthanc (``/usr/sbin/Orthanc``) with its own storage, index, HTTP and DICOM ports.

    ``modalities`` become ``DicomModalities`` (``{"node": ["DENOISE", "127.0.0.1", 11112]}``); more can be
    added while it runs with :meth:`add_modality` (kept in memory only: lost on restart).  :meth:`stop` then
    :meth:`start` restarts it on the same ports and storage.  REST goes through urllib, proxies disabled.

    ``dicomweb=True`` loads the DICOMweb plugin (STOW-RS at :attr:`dicomweb_url`); ``users`` (name → password)
    turns on HTTP basic auth for REST and DICOMweb alike, and the harness's own REST calls log in as the first user.
    """

    def __init__(
        self,
        base_dir: StrPath,
        modalities: Mapping[str, Modality] | None = None,
        *,
        aet: str = "ORTHANC",
        stable_age: int = 1,
        dicomweb: bool = False,
        users: Mapping[str, str] | None = None,
        config_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        while self.dicom_port == self.http_port:
            self.dicom_port = free_port()
        self.config_path = self.base_dir / "orthanc.json"
        self.log_path = self.base_dir / "orthanc.log"
        self.config: dict[str, Any] = {
            "Name": f"test-{aet}",
            "StorageDirectory": str(self.base_dir / "storage"),
            "IndexDirectory": str(self.base_dir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(users),
            "RegisteredUsers": dict(users or {}),
            "Plugins": [dicomweb_plugin()] if dicomweb else [],
            **({"DicomWeb": {"Enable": True, "Root": f"{DICOMWEB_ROOT}/"}} if dicomweb else {}),
            "LuaScripts": [],
            "DicomModalities": {name: _modality_json(m) for name, m in (modalities or {}).items()},
            "DicomModalitiesInDatabase": False,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "UnknownSopClassAccepted": True,
            "StableAge": stable_age,
            "DicomScuTimeout": 10,
            "SaveJobs": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "MetricsEnabled": False,
            "HttpsCACertificates": "",
            **(config_overrides or {}),
        }
        self.http_port, self.dicom_port = int(self.config["HttpPort"]), int(self.config["DicomPort"])
        self.aet = str(self.config["DicomAet"])
        self.proc: subprocess.Popen[bytes] | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        login = next(iter((users or {}).items()), None)
        self._auth = "Basic " + base64.b64encode(":".join(login).encode()).decode() if login else ""

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb service root (STOW-RS posts to ``{dicomweb_url}/studies``)."""
        return self.url + DICOMWEB_ROOT

    def start(self, timeout: float = 30.0) -> None:
        """Write the config, start Orthanc and wait until ``/system`` answers."""
        if self.running:
            return
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=2))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [require("Orthanc"), str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=peer_env(),
                cwd=self.base_dir,
                start_new_session=True,
            )
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {proc.returncode}")
            try:
                return bool(self.get("/system", timeout=2))
            except (OSError, OrthancHTTPError):
                return False

        try:
            if not wait_until(ready, timeout, interval=0.05):
                raise TimeoutError(f"Orthanc REST did not answer within {timeout} s")
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(f"Orthanc did not start: {exc}\n{tail_text(self.log_path)}") from exc

    def stop(self, timeout: float = 20.0) -> None:
        """Stop Orthanc cleanly (SIGTERM, bounded wait, SIGKILL); a clean stop takes Orthanc ~3.5 s."""
        if self.proc is not None:
            stop_process(self.proc, timeout)

    def logtail_text(self, lines: int = 40) -> str:
        """Last lines of Orthanc's log."""
        return tail_text(self.log_path, lines)

    def __enter__(self) -> "Orthanc":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # REST plumbing ------------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        *,
        content_type: str = "",
        timeout: float = 60.0,
    ) -> bytes:
        """Raw REST call; raises :class:`OrthancHTTPError` on an HTTP error status."""
        url = self.url + path
        req = urllib.request.Request(url, data=data, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        if self._auth:
            req.add_header("Authorization", self._auth)
        try:
            with self._opener.open(req, timeout=timeout) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            raise OrthancHTTPError(method, url, exc.code, exc.read().decode(errors="replace")) from None

    def get(self, path: str, timeout: float = 60.0) -> Any:
        """GET returning decoded JSON."""
        return json.loads(self.request("GET", path, timeout=timeout))

    def call(self, method: str, path: str, payload: object = None, timeout: float = 60.0) -> Any:
        """POST/PUT/DELETE a JSON payload; return the decoded JSON answer (``None`` when empty)."""
        data = None if payload is None else json.dumps(payload).encode()
        body = self.request(method, path, data, content_type="application/json", timeout=timeout)
        return json.loads(body) if body.strip() else None

    # Convenience --------------------------------------------------------------------------------------------

    def upload(self, path: StrPath) -> dict[str, Any]:
        """POST a DICOM file to ``/instances``; return the answer (``ID``, ``ParentSeries``, ``Status``)."""
        body = self.request("POST", "/instances", Path(path).read_bytes(), content_type="application/dicom")
        return dict(json.loads(body))

    def add_modality(self, name: str, aet: str, port: int, host: str = LOOPBACK) -> None:
        """Register (or replace) a DICOM modality at runtime (``PUT /modalities/{name}``)."""
        self.call("PUT", f"/modalities/{_quote(name)}", {"AET": aet, "Host": host, "Port": port})

    def echo(self, modality: str) -> bool:
        """C-ECHO from Orthanc to a configured modality; whether it answered."""
        try:
            self.call("POST", f"/modalities/{_quote(modality)}/echo", {})
        except OrthancHTTPError:
            return False
        return True

    def modalities(self) -> dict[str, Any]:
        """Configured modalities (``GET /modalities?expand``)."""
        return dict(self.get("/modalities?expand"))

    def store_to_modality(self, modality: str, resources: Sequence[str], timeout: float = 120.0) -> dict[str, Any]:
        """C-STORE Orthanc resources (any level) to a modality synchronously; raises on failure."""
        payload = {"Resources": list(resources), "Synchronous": True}
        return dict(self.call("POST", f"/modalities/{_quote(modality)}/store", payload, timeout=timeout))

    def series(self) -> list[dict[str, Any]]:
        """All series (``GET /series?expand``)."""
        return list(self.get("/series?expand"))

    def series_instances(self, series_id: str) -> list[dict[str, Any]]:
        """Instances of an Orthanc series id (``GET /series/{id}/instances``)."""
        return list(self.get(f"/series/{_quote(series_id)}/instances"))

    def instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM file of an instance."""
        return self.request("GET", f"/instances/{_quote(instance_id)}/file")

    def find_series_by_uid(self, series_uid: str) -> dict[str, Any] | None:
        """The expanded series with this SeriesInstanceUID, or ``None``."""
        for series in self.series():
            if series.get("MainDicomTags", {}).get("SeriesInstanceUID") == series_uid:
                return series
        return None

    def wait_for_series(self, series_uid: str, count: int, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the series holds at least ``count`` instances; return it or raise ``TimeoutError``."""
        found: dict[str, Any] | None = None

        def enough() -> bool:
            nonlocal found
            found = self.find_series_by_uid(series_uid)
            return found is not None and len(found["Instances"]) >= count

        if not wait_until(enough, timeout, interval=0.1) or found is None:
            have = 0 if found is None else len(found["Instances"])
            raise TimeoutError(f"series {series_uid}: {have} of {count} instances after {timeout} s")
        return found


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _modality_json(modality: Modality) -> Any:
    return dict(modality) if isinstance(modality, Mapping) else list(modality)
