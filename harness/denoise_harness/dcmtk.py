"""dcmtk peers: ``storescu`` and ``echoscu`` as SCUs, ``storescp`` as a PACS that keeps a ledger."""

import os
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from denoise_harness.files import sop_instance_uid
from denoise_harness.net import (
    LOOPBACK,
    ChildProcess,
    StrPath,
    free_port,
    peer_env,
    require,
    stop_process,
    tail_text,
    wait_for_port,
    wait_until,
)

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


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


class StoreSCP(ChildProcess):
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
        accept_only: Sequence[str] = (),
    ) -> None:
        """``accept_only``: SOP Class UIDs the PACS accepts (uncompressed), refusing every other presentation context;
        empty: every storage SOP class and transfer syntax dcmtk knows."""
        self.base_dir = Path(base_dir).absolute()
        self.accept_only = list(accept_only)
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
        if self.accept_only:
            profile = self.base_dir / "accept.cfg"
            contexts = [f"PresentationContext{i} = {uid}\\UNCOMPRESSED" for i, uid in enumerate(self.accept_only, 1)]
            lines = ["[[TransferSyntaxes]]", "[UNCOMPRESSED]"]
            lines += [f"TransferSyntax{i} = {ts}" for i, ts in enumerate(_UNCOMPRESSED, 1)]
            lines += ["[[PresentationContexts]]", "[ACCEPTED]", *contexts, "[[Profiles]]", "[ONLY]"]
            lines += ["PresentationContexts = ACCEPTED"]
            self.base_dir.mkdir(parents=True, exist_ok=True)
            profile.write_text("\n".join(lines) + "\n")
            negotiation = ["-xf", str(profile), "ONLY"]
        else:
            # all supported transfer syntaxes; promiscuous: unknown (private, newer) storage SOP classes too
            negotiation = ["+xa", "-pm"]
        return [
            require("storescp"),
            "-aet", self.ae_title,
            "-od", str(self.out_dir),
            "-uf",  # file name = modality prefix + SOP Instance UID (dcmtk default, stated explicitly)
            *negotiation,
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
            raise RuntimeError(f"storescp did not start: {exc}\n{tail_text(self.log_path)}") from exc

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
