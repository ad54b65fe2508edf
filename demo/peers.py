"""Local DICOM peers as child processes: dcmtk storescu/storescp and Orthanc, on loopback only.

Used by ``make demo`` (a PACS for the derived series, a real SCU for the LD series) and by the tests (real peers,
not mocks). dcmtk (and Orthanc, which uses dcmtk's network layer) waits for Nagle's algorithm (~45 ms per message)
unless ``TCP_NODELAY=1`` is set, so every peer started here gets it. Every wait is bounded; each child runs in its
own process group so that stopping it also stops anything it started.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

LOOPBACK = "127.0.0.1"
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

StrPath = str | os.PathLike[str]
_HANDED_OUT: set[int] = set()


class PeerMissing(RuntimeError):
    """A peer program (dcmtk, Orthanc) is not installed."""


# ----------------------------------------------------------------------------------------- generic helpers


def find_program(binary: str) -> str | None:
    """Full path of the native ``binary`` on PATH or in the sbin directories (Debian installs Orthanc in /usr/sbin).

    Only compiled programs count: pynetdicom 3 installs Python scripts named ``storescu``, ``storescp`` and
    ``echoscu`` into the virtualenv, with other options than dcmtk's, and an activated venv puts them first.
    """
    for directory in [*os.environ.get("PATH", os.defpath).split(os.pathsep), *_SBIN_DIRS]:
        found = shutil.which(binary, path=directory) if directory else None
        if found is None:
            continue
        with contextlib.suppress(OSError), open(found, "rb") as fh:
            if fh.read(4) == b"\x7fELF":
                return found
    return None


def require(binary: str) -> str:
    """Return the full path of ``binary``; raise :class:`PeerMissing` naming the Debian package when absent."""
    found = find_program(binary)
    if found is None:
        package = {"Orthanc": "orthanc", "dciodvfy": "dicom3tools"}.get(binary, "dcmtk")
        raise PeerMissing(f"{binary} is not installed (Debian package {package})")
    return found


def peer_env() -> dict[str, str]:
    """Environment for dcmtk-based processes: ``TCP_NODELAY=1`` avoids the Nagle stall per message."""
    return {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago and not handed out before in this process."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds pass; return whether it became truthy."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def port_open(port: int, host: str = LOOPBACK) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself holds a listening TCP socket on ``port`` (Linux ``/proc``)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    if inodes:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return True
    return False


def wait_for_port(
    port: int, timeout: float = 10.0, host: str = LOOPBACK, proc: subprocess.Popen[Any] | None = None
) -> None:
    """Wait until ``host:port`` accepts connections.

    With ``proc``, wait until that very process listens on the port (no probe connection, no false positive
    from another listener) and raise ``RuntimeError`` as soon as it exits.  Raises ``TimeoutError``.
    """
    use_proc = proc is not None and Path("/proc/net/tcp").exists()

    def ready() -> bool:
        if proc is None:
            return port_open(port, host)
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before port {port} opened")
        return listens(proc.pid, port) if use_proc else port_open(port, host)

    if not wait_until(ready, timeout):
        raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session=True``), wait, SIGKILL."""
    pgid = proc.pid
    if proc.returncode is not None:
        return  # reaped earlier (e.g. a second stop): its pid may belong to someone else by now
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout)
    # Children left in the group (e.g. a -xcr shell) go too; a pid still used as a group id is not reused.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


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


def sop_instance_uid(path: StrPath) -> str:
    """SOP Instance UID of a DICOM file."""
    return str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


# ----------------------------------------------------------------------------------------- dcmtk SCU tools


def _expand(files_or_dir: StrPath | Iterable[StrPath]) -> list[Path]:
    items = [files_or_dir] if isinstance(files_or_dir, str | os.PathLike) else list(files_or_dir)
    out: list[Path] = []
    for item in map(Path, items):
        out.extend(sorted(p for p in item.rglob("*") if p.is_file()) if item.is_dir() else [item])
    return out


def file_syntax_profile(files: Iterable[Path]) -> str | None:
    """dcmtk association profile proposing, per SOP class, uncompressed + each file's own transfer syntax.

    Returns the config text (profile name ``FILES``) or ``None`` when no readable DICOM file is found.
    """
    pairs: dict[str, set[str]] = {}
    for path in files:
        try:
            meta = read_file_meta_info(path)
        except (InvalidDicomError, OSError, ValueError):
            continue
        sop_class, syntax = meta.get("MediaStorageSOPClassUID"), meta.get("TransferSyntaxUID")
        if sop_class and syntax:
            pairs.setdefault(str(sop_class), set()).add(str(syntax))
    if not pairs:
        return None
    syntaxes = sorted({ts for found in pairs.values() for ts in found} - set(_UNCOMPRESSED))
    lines = ["[[TransferSyntaxes]]", "[UNCOMPRESSED]"]
    lines += [f"TransferSyntax{i} = {ts}" for i, ts in enumerate(_UNCOMPRESSED, 1)]
    for i, ts in enumerate(syntaxes):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {ts}"]
    contexts = []
    for sop_class, found in sorted(pairs.items()):
        contexts.append(f"{sop_class}\\UNCOMPRESSED")
        contexts += [f"{sop_class}\\TS{syntaxes.index(ts)}" for ts in sorted(found) if ts in syntaxes]
    if len(contexts) > 128:
        raise ValueError(f"{len(contexts)} presentation contexts needed, DICOM allows 128")
    lines += ["[[PresentationContexts]]", "[CONTEXTS]"]
    lines += [f"PresentationContext{i} = {pc}" for i, pc in enumerate(contexts, 1)]
    lines += ["[[Profiles]]", "[FILES]", "PresentationContexts = CONTEXTS"]
    return "\n".join(lines) + "\n"


def _dcmtk_timeouts(timeout: float) -> list[str]:
    seconds = str(max(1, int(timeout)))
    return ["-to", seconds, "-ta", seconds, "-td", seconds, "-ts", seconds]


def storescu(
    files_or_dir: StrPath | Iterable[StrPath],
    port: int,
    called_aet: str,
    calling_aet: str = "SCANNER",
    timeout: float = 60.0,
    *,
    host: str = LOOPBACK,
    propose_file_syntaxes: bool = True,
    extra_args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Send files and/or directories (scanned recursively) with dcmtk ``storescu`` in one association.

    With ``propose_file_syntaxes`` the proposal comes from a generated ``-xf`` profile holding each file's own
    transfer syntax, so compressed files (JPEG lossless, JPEG-LS, JPEG 2000, RLE, ...) go out as they are:
    dcmtk's default proposal is uncompressed only and this storescu cannot convert compressed files.
    Set it to ``False`` to get dcmtk's default proposal or to pass ``-x...``/``-R`` in ``extra_args``
    (dcmtk refuses those together with ``-xf``).  ``timeout`` also bounds dcmtk's connect/ACSE/DIMSE/socket
    timeouts.  Never raises on a failed store: check ``returncode`` and ``stdout``/``stderr``.
    """
    exe = require("storescu")
    targets = [files_or_dir] if isinstance(files_or_dir, str | os.PathLike) else list(files_or_dir)
    with tempfile.TemporaryDirectory(prefix="storescu-") as tmp:
        args = [exe, "-aet", calling_aet, "-aec", called_aet, "+sd", "+r", *_dcmtk_timeouts(timeout)]
        profile = file_syntax_profile(_expand(targets)) if propose_file_syntaxes else None
        if profile is not None:
            config = Path(tmp) / "propose.cfg"
            config.write_text(profile)
            args += ["-xf", str(config), "FILES"]
        args += [*extra_args, host, str(port), *map(str, targets)]
        return subprocess.run(args, env=peer_env(), capture_output=True, text=True, timeout=timeout + 10)


def echoscu(
    port: int, called_aet: str, calling_aet: str = "SCANNER", timeout: float = 10.0, *, host: str = LOOPBACK
) -> subprocess.CompletedProcess[str]:
    """C-ECHO with dcmtk ``echoscu``; ``returncode == 0`` means the peer answered."""
    exe = require("echoscu")
    args = [exe, "-aet", calling_aet, "-aec", called_aet, *_dcmtk_timeouts(timeout), host, str(port)]
    return subprocess.run(args, env=peer_env(), capture_output=True, text=True, timeout=timeout + 10)


# ----------------------------------------------------------------------------------------- dcmtk storescp


class _Child:
    """A peer program run as a child process (``proc``)."""

    proc: subprocess.Popen[bytes] | None

    @property
    def pid(self) -> int | None:
        """Pid of the running program, if any."""
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the program is alive."""
        return self.proc is not None and self.proc.poll() is None


class StoreSCP(_Child):
    """dcmtk ``storescp`` on a loopback port, writing each object to ``out_dir/<Modality>.<SOPInstanceUID>``.

    Accepts every storage SOP class (``-pm``) and every transfer syntax dcmtk knows (``+xa``).  Each saved
    object is appended to a ledger (``-xcr``, synchronous), so :meth:`files` never returns a half-written
    file, even after a kill.  The ledger line is written just *after* the C-STORE response goes out (before
    storescp reads the next PDU, so it is there once the association is released): when the sender may keep
    its association open, use :meth:`wait_for_files`.  :meth:`stop` and :meth:`start` reuse the same port.
    """

    def __init__(
        self,
        base_dir: StrPath,
        ae_title: str = "PACS",
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.ae_title = ae_title
        self.port = port if port is not None else free_port()
        self.out_dir = self.base_dir / "received"
        self.log_path = self.base_dir / "storescp.log"
        self.ledger_path = self.base_dir / "received.txt"
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The storescp command line."""
        ledger = f"printf '%s\\n' '#p/#f' >> '{self.ledger_path}'"
        return [
            require("storescp"),
            "-aet", self.ae_title,
            "-od", str(self.out_dir),
            "-uf",  # file name = modality prefix + SOP Instance UID (dcmtk default, stated explicitly)
            "+xa",  # accept all supported transfer syntaxes
            "-pm",  # promiscuous: accept unknown (private, newer) storage SOP classes
            "-dhl",  # no reverse DNS lookups
            "-xcr", ledger,
            "-xs",  # run the ledger command synchronously: no background children
            *self.extra_args,
            str(self.port),
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> None:
        """Start storescp (same port every time) and wait until it listens."""
        if self.running:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=peer_env(), start_new_session=True
            )
        try:
            wait_for_port(self.port, timeout, proc=self.proc)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(f"storescp did not start: {exc}\n{_tail(self.log_path)}") from exc

    def stop(self, timeout: float = 10.0) -> None:
        """Stop storescp (SIGTERM, bounded wait, SIGKILL); no-op when not running."""
        if self.proc is not None:
            stop_process(self.proc, timeout)

    def files(self) -> list[Path]:
        """Received files whose C-STORE completed, in arrival order (each path once)."""
        try:
            lines = self.ledger_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [Path(line) for line in dict.fromkeys(lines) if line and Path(line).is_file()]

    def sop_instance_uids(self) -> set[str]:
        """SOP Instance UIDs of the received files."""
        return {sop_instance_uid(path) for path in self.files()}

    def wait_for_files(self, count: int, timeout: float = 30.0) -> list[Path]:
        """Wait until at least ``count`` files arrived; return them or raise ``TimeoutError``."""
        if not wait_until(lambda: len(self.files()) >= count, timeout):
            raise TimeoutError(f"{len(self.files())} of {count} files arrived at storescp in {timeout} s")
        return self.files()

    def log_text(self) -> str:
        """Everything storescp printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> "StoreSCP":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------------------- Orthanc

Modality = Sequence[str | int] | Mapping[str, Any]


class OrthancHTTPError(RuntimeError):
    """An Orthanc REST call answered with an HTTP error status."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> HTTP {status}: {body}")
        self.status = status
        self.body = body


class Orthanc(_Child):
    """A private Orthanc (``/usr/sbin/Orthanc``) with its own storage, index, HTTP and DICOM ports.

    ``modalities`` become ``DicomModalities`` (``{"node": ["DENOISE", "127.0.0.1", 11112]}``); more can be
    added while it runs with :meth:`add_modality` (kept in memory only: lost on restart).  :meth:`stop` then
    :meth:`start` restarts it on the same ports and storage.  REST goes through urllib, proxies disabled.
    """

    def __init__(
        self,
        base_dir: StrPath,
        modalities: Mapping[str, Modality] | None = None,
        *,
        aet: str = "ORTHANC",
        stable_age: int = 1,
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
            "AuthenticationEnabled": False,
            "Plugins": [],
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

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://{LOOPBACK}:{self.http_port}"

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
            raise RuntimeError(f"Orthanc did not start: {exc}\n{_tail(self.log_path)}") from exc

    def stop(self, timeout: float = 20.0) -> None:
        """Stop Orthanc cleanly (SIGTERM, bounded wait, SIGKILL); a clean stop takes Orthanc ~3.5 s."""
        if self.proc is not None:
            stop_process(self.proc, timeout)

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of Orthanc's log."""
        return _tail(self.log_path, lines)

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
