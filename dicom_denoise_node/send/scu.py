"""⑤ The C-STORE SCU: send a derived series to one destination and check every response status.

Nagle's algorithm is turned off only while the association's reactor is held (pynetdicom_patches.py): with
TCP_NODELAY a C-STORE response comes back fast enough to hit a race in pynetdicom's requestor reactor, which can
take the response off the queue before ``send_c_store`` does ("Received unexpected C-STORE service message", then
a DIMSE timeout). When the reactor cannot be held, Nagle stays on, at ≈ 40 ms per sent instance
(docs/benchmarks.md).

Retries are data, not loops: a failed attempt raises SendError, and the pipeline records attempts,
next_attempt_at and last_error in the catalog (exponential backoff, FAILED after max_attempts).

A destination with ``[destinations.tls] enabled`` is reached over DICOM TLS (config/destinations.py's context). When its
association fails, the handshake is tried once more on its own to put the reason (an untrusted certificate, a host
name it does not name) into the error that ``status`` shows; pynetdicom only logs it.
"""

from __future__ import annotations

import enum
import logging
import socket
import ssl
from collections.abc import Callable, Collection
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from dicom_denoise_node.config import Destination
from dicom_denoise_node.pynetdicom_patches import disable_nagle, held_reactor

log = logging.getLogger(__name__)


class StoreOutcome(enum.Enum):
    SUCCESS = "success"
    WARNING = "warning"
    FAILURE = "failure"


WARNING_STATUSES = {0xB000, 0xB006, 0xB007}  # coercion, elements discarded, data set does not match SOP class


SR_CLASSES = {str(uid) for uid in (BasicTextSRStorage, EnhancedSRStorage, ComprehensiveSRStorage)}


class SendError(RuntimeError):
    """A destination did not acknowledge the whole series; the message says which instance and why."""


def classify(status: int) -> StoreOutcome:
    if status == 0x0000:
        return StoreOutcome.SUCCESS
    if status in WARNING_STATUSES:
        return StoreOutcome.WARNING
    return StoreOutcome.FAILURE


def _scu(calling_aet: str, timeout_s: float) -> AE:
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = min(timeout_s, 30)
    return ae


def _associate(ae: AE, dest: Destination, timeout_s: float) -> Association:
    """An established association with ``dest`` (over TLS when it says so), or SendError with the reason."""
    tls = dest.tls.ssl_context() if dest.tls.enabled else None
    tls_args = (tls, dest.host) if tls is not None else None
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args)
    if assoc.is_established:
        return assoc
    reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no answer"
    if tls is not None and not assoc.is_rejected:
        reason += f"; {_handshake_failure(dest, tls, timeout_s)}"
    raise SendError(f"association with {dest.key} failed ({reason})")


def _handshake_failure(dest: Destination, tls: ssl.SSLContext, timeout_s: float) -> str:
    """Why a TLS association could not start: the handshake alone, tried once more (pynetdicom keeps no reason)."""
    try:
        with (
            socket.create_connection((str(dest.host), int(dest.port or 0)), timeout=min(timeout_s, 30)) as raw,
            tls.wrap_socket(raw, server_hostname=dest.host),
        ):
            return "TLS handshake succeeded when tried again"
    except ssl.SSLCertVerificationError as exc:
        return f"TLS: the peer's certificate was refused: {exc.verify_message}"
    except (ssl.SSLError, OSError) as exc:
        return f"TLS: {exc}"


def send_files(
    files: list[Path],
    dest: Destination,
    calling_aet: str,
    timeout_s: float = 60.0,
    on_stored: Callable[[str], None] | None = None,
    optional_classes: Collection[str] = SR_CLASSES,
) -> int:
    """C-STORE every file over one association; raise SendError on the first non-success status.

    A destination that refuses the quality report's SR presentation context (a PACS for images only) gets the
    images without it, with a warning: the refusal is an answer, not a failure to retry (``optional_classes``;
    passing originals on, none is). A refused image class is a SendError. ``on_stored`` is called with each SOP
    Instance UID the destination confirmed (Success or a warning).

    Each file goes in its own transfer syntax (a received original may be JPEG Lossless): every compressed one is
    proposed in a context of its own beside the uncompressed ones, and to a destination that refuses it the file
    goes decompressed (a lossless one loses nothing).
    """
    if not files:
        return 0
    headers = {f: dcmread(f, stop_before_pixels=True, specific_tags=["SOPClassUID"]) for f in files}
    classes = {f: str(h.SOPClassUID) for f, h in headers.items()}
    syntaxes = {(classes[f], UID(h.file_meta.TransferSyntaxUID)) for f, h in headers.items()}
    ae = _scu(calling_aet, timeout_s)
    for sop_class in sorted(set(classes.values())):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    for sop_class, syntax in sorted(pair for pair in syntaxes if pair[1].is_compressed):
        ae.add_requested_context(sop_class, [syntax])
    assoc = _associate(ae, dest, timeout_s)
    try:
        contexts = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
        accepted = {sop_class for sop_class, _ in contexts}
        refused = sorted(set(classes.values()) - accepted)
        required = [c for c in refused if c not in optional_classes]
        if required:
            raise SendError(f"{dest.key} accepts no presentation context for {', '.join(required)}")
        if refused:
            log.warning("%s does not accept the quality report (SR): the images are sent without it", dest.key)
        with held_reactor(assoc) as held:
            if held:
                disable_nagle(assoc)
            return _store_all(assoc, [f for f in files if classes[f] in accepted], dest, on_stored, contexts)
    finally:
        if assoc.is_established:
            assoc.release()


def _store_all(
    assoc: Association,
    files: list[Path],
    dest: Destination,
    on_stored: Callable[[str], None] | None,
    contexts: set[tuple[str, str]],
) -> int:
    sent = 0
    for path in files:
        ds = _as_accepted(dcmread(path), contexts, dest)
        status = assoc.send_c_store(ds)
        if not status or "Status" not in status:
            raise SendError(f"{dest.key}: no C-STORE response for {ds.SOPInstanceUID} (connection lost?)")
        code = int(status.Status)
        outcome = classify(code)
        if outcome is StoreOutcome.FAILURE:
            raise SendError(f"{dest.key} refused {ds.SOPInstanceUID} with status 0x{code:04X}")
        if outcome is StoreOutcome.WARNING:
            log.warning("%s stored %s with warning 0x%04X", dest.key, ds.SOPInstanceUID, code)
        if on_stored is not None:
            on_stored(str(ds.SOPInstanceUID))
        sent += 1
    return sent


def _as_accepted(ds: Dataset, contexts: set[tuple[str, str]], dest: Destination) -> Dataset:
    """The data set in its own transfer syntax, or decompressed when the destination refused that one."""
    syntax = ds.file_meta.TransferSyntaxUID
    if not syntax.is_compressed or (str(ds.SOPClassUID), str(syntax)) in contexts:
        return ds
    try:
        ds.decompress()
    except Exception as exc:  # pydicom raises many types for pixel data it cannot decode
        reason = f"{dest.key} does not take {syntax.name} and {ds.SOPInstanceUID} did not decompress: {exc}"
        raise SendError(reason) from exc
    log.debug("%s takes no %s: %s sent decompressed", dest.key, syntax.name, ds.SOPInstanceUID)
    return ds


def echo(dest: Destination, calling_aet: str, timeout_s: float = 30.0) -> int:
    """C-ECHO a destination; returns the status code (raises SendError when no association, or for a STOW-RS one)."""
    if dest.kind != "dimse":
        raise SendError(f"{dest.key} is a {dest.kind} destination: C-ECHO does not apply")
    ae = _scu(calling_aet, timeout_s)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, dest, timeout_s)
    try:
        status = assoc.send_c_echo()
        if not status or "Status" not in status:
            raise SendError(f"{dest.key}: no C-ECHO response")
        return int(status.Status)
    finally:
        if assoc.is_established:
            assoc.release()
