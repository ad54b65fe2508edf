"""① The C-STORE SCP: C-ECHO, CT, Enhanced CT and Legacy Converted Enhanced CT storage → spool + catalog → a named
status.

The handler only records and returns: it writes the received bytes as they came (no re-encoding), makes them
durable, commits the catalog row, and only then answers Success. It never decodes pixels or runs inference.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import struct
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset
from pydicom.encaps import parse_fragments
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from dicom_denoise_node.codecs import decodable_transfer_syntaxes, log_refused_syntaxes
from dicom_denoise_node.config import FORWARD_ONLY_SOP_CLASSES, NodeSettings
from dicom_denoise_node.pynetdicom_patches import NODELAY_HANDLER, start_server, stream_received_datasets
from dicom_denoise_node.receive.admission import Admission, server_tls_context
from dicom_denoise_node.receive.audit import AssociationAudit
from dicom_denoise_node.receive.stream import ReceivedFile, ReceiveSink
from dicom_denoise_node.store.catalog import Catalog, InstanceMeta, SeriesBeingPurged
from dicom_denoise_node.store.disk import MIB
from dicom_denoise_node.store.spool import InvalidUID, Spool, check_uid, place_durably, publish

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = dcm_uid.CTImageStorage
ENHANCED_CT_IMAGE_STORAGE = dcm_uid.EnhancedCTImageStorage
LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE = dcm_uid.LegacyConvertedEnhancedCTImageStorage
ACCEPTED_SOP_CLASSES = (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE)


class StoreStatus(enum.IntEnum):
    """Storage Service Class statuses (PS3.4 Annex B.2.3) the SCP answers with."""

    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000


class EchoStatus(enum.IntEnum):
    SUCCESS = 0x0000


def _instance_number(ds: Dataset) -> int | None:
    try:
        value = ds.get("InstanceNumber")
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def pixel_data_problem(ds: Dataset, transfer_syntax: dcm_uid.UID, max_pixels: int = 4096 * 4096) -> str | None:
    """Why the pixel data cannot be whole (truncated native data, broken encapsulation) or a frame is too large to
    decode safely (a few KB of RLE or JPEG may declare 65535² pixels: gigabytes once decoded), or None. The limit is
    per frame: an Enhanced CT of hundreds of 512² frames is one normal series (its whole is bounded by
    :func:`decoded_size_problem`).

    Checks the header, lengths and the fragment structure only; pixels are decoded later by the worker, never here.
    """
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as exc:
        return f"image pixel module incomplete: {exc}"
    if rows * columns > max_pixels:
        return (
            f"frame of {rows} × {columns} = {rows * columns} pixels exceeds "
            f"[node] max_image_pixels = {max_pixels}: not decoded"
        )
    data = ds.PixelData
    if transfer_syntax.is_encapsulated:
        try:
            n, _ = parse_fragments(data)
        except (ValueError, EOFError, struct.error) as exc:
            return f"encapsulated PixelData is malformed: {exc}"
        return None if n >= 1 else "encapsulated PixelData has no fragments"
    expected = rows * columns * frames * samples * bits // 8
    if len(data) < expected:
        return f"PixelData truncated: {len(data)} of {expected} bytes"
    return None


def decoded_size_problem(ds: Dataset, max_dataset_mb: float) -> str | None:
    """Why the decoded pixels would exceed ``max_dataset_mb`` (frames × rows × columns × bytes, from the header), or
    None: a compressed multi-frame object of a few MB may declare gigabytes of frames. Native data sets that large
    were refused while they arrived."""
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        size = int(ds.Rows) * int(ds.Columns) * frames * int(ds.get("SamplesPerPixel", 1) or 1)
        size = size * int(ds.BitsAllocated) // 8
    except (AttributeError, TypeError, ValueError):
        return None  # pixel_data_problem names what is missing
    if size <= max_dataset_mb * MIB:
        return None
    return (
        f"{frames} frame(s) of {ds.Rows} × {ds.Columns} decode to {size / MIB:.1f} MiB, over "
        f"max_dataset_mb={max_dataset_mb:g}: not decoded"
    )


def _reject(status: StoreStatus, reason: str, event: Event) -> int:
    log.warning(
        "C-STORE from %s rejected with %s (0x%04X): %s",
        event.assoc.requestor.ae_title,
        status.name,
        status.value,
        reason,
    )
    return status.value


def handle_store(
    event: Event, spool: Spool, catalog: Catalog, sink: ReceiveSink, admission: Admission | None = None
) -> int:
    """Store one instance durably, record it, and return the named status; the streamed file is stored or deleted."""
    received = sink.take(event.dataset_path)
    if received is None:  # its association closed before the handler ran: the file went with it
        return _reject(StoreStatus.PROCESSING_FAILURE, "the data set was dropped with its association", event)
    try:
        return _store(event, received, spool, catalog, admission)
    finally:
        received.discard()  # a no-op once the file was renamed into the spool


class _Refused(Exception):
    """An instance refused with a named status and the reason (logged once by ``_reject``)."""

    def __init__(self, status: StoreStatus, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _store(event: Event, received: ReceivedFile, spool: Spool, catalog: Catalog, admission: Admission | None) -> int:
    """The checks in the order a refusal costs least, then spool, catalog and (for a resend) publish."""
    try:
        _check_receipt(received, admission)
        ds = _read(received)
        sop_uid, series_uid, study_uid = _identify(ds)
        gate = admission.new_series_gate(series_uid) if admission is not None else contextlib.nullcontext(None)
        with gate as refusal:  # the first instance of a new series is admitted under a lock: the limit is exact
            if refusal:
                raise _Refused(StoreStatus.OUT_OF_RESOURCES, refusal)
            _check_content(ds, event, admission)
            uids = (study_uid, series_uid, sop_uid)
            path, staged = _place(received, spool, uids)
            _record(catalog, ds, event, received, (path, staged), uids)
            if staged is not None:
                try:
                    publish(staged, path)
                except OSError as exc:  # the earlier copy stays in place; the SCU resends this one
                    reason = f"could not replace {sop_uid} in the spool: {exc}"
                    raise _Refused(StoreStatus.OUT_OF_RESOURCES, reason) from exc
    except _Refused as refused:
        return _reject(refused.status, refused.reason, event)
    log.debug("stored %s (series %s) from %s", sop_uid, series_uid, event.assoc.requestor.ae_title)
    return StoreStatus.SUCCESS.value


def _check_receipt(received: ReceivedFile, admission: Admission | None) -> None:
    """What receiving itself found: over the size limit, a write error, or no free space left."""
    if received.over_limit:
        raise _Refused(
            StoreStatus.OUT_OF_RESOURCES,
            f"dataset of {received.received / MIB:.1f} MiB exceeds max_dataset_mb={received.limit / MIB:g}: "
            "stopped writing it at the limit, nothing kept",
        )
    if received.write_error is not None:
        exc = received.write_error
        what = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "could not write to the spool"
        raise _Refused(StoreStatus.OUT_OF_RESOURCES, f"{what} while receiving: {exc}")
    if admission is not None and (refusal := admission.disk_refusal()):
        raise _Refused(StoreStatus.OUT_OF_RESOURCES, refusal)


def _read(received: ReceivedFile) -> Dataset:
    try:
        return dcmread(received.path)  # the descriptor stays open for finish()'s fsync
    except Exception as exc:  # pydicom raises many types on malformed input
        raise _Refused(StoreStatus.CANNOT_UNDERSTAND, f"dataset could not be decoded: {exc}") from exc


def _identify(ds: Dataset) -> tuple[str, str, str]:
    """(SOP instance, series, study) UIDs, each checked before it names a file."""
    try:
        if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
            raise _Refused(StoreStatus.CANNOT_UNDERSTAND, "not a DICOM data set (no SOP Class/Instance UID)")
        sop_uid = check_uid(str(ds.get("SOPInstanceUID", "")), "SOPInstanceUID")
        series_uid = check_uid(str(ds.get("SeriesInstanceUID", "")), "SeriesInstanceUID")
        study_uid = check_uid(str(ds.get("StudyInstanceUID", "")), "StudyInstanceUID")
    except InvalidUID as exc:
        raise _Refused(StoreStatus.CANNOT_UNDERSTAND, str(exc)) from exc
    except _Refused:
        raise
    except Exception as exc:
        raise _Refused(StoreStatus.CANNOT_UNDERSTAND, f"dataset could not be decoded: {exc}") from exc
    return sop_uid, series_uid, study_uid


def _check_content(ds: Dataset, event: Event, admission: Admission | None) -> None:
    """The data set matches its presentation context and has pixels this node can decode."""
    context_class = event.context.abstract_syntax
    if str(ds.get("SOPClassUID", "")) != context_class:
        raise _Refused(
            StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            f"SOPClassUID {ds.get('SOPClassUID')} does not match the presentation context {context_class}",
        )
    if context_class in FORWARD_ONLY_SOP_CLASSES:
        return  # a dose report, accepted only to be passed on: no pixels
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise _Refused(StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "no PixelData in a CT image")
    settings = admission.settings if admission is not None else NodeSettings()
    try:
        problem = pixel_data_problem(ds, dcm_uid.UID(str(event.context.transfer_syntax)), settings.max_image_pixels)
        too_large = None if problem else decoded_size_problem(ds, settings.max_dataset_mb)
    except Exception as exc:  # a value pydicom cannot even parse
        problem, too_large = f"dataset could not be decoded: {exc}", None
    if problem:
        raise _Refused(StoreStatus.CANNOT_UNDERSTAND, problem)
    if too_large:
        raise _Refused(StoreStatus.OUT_OF_RESOURCES, too_large)


def _place(received: ReceivedFile, spool: Spool, uids: tuple[str, str, str]) -> tuple[Path, Path | None]:
    """The spool path, and for a resend the new copy staged beside it until its row is committed."""
    study_uid, series_uid, sop_uid = uids
    try:
        path = spool.incoming_path(study_uid, series_uid, sop_uid)
        # The data set exactly as received (never re-encoded), behind pynetdicom's preamble and file meta.
        received.finish()
        if path.exists():  # a resend: the copy acknowledged earlier stays until the new row is committed
            return path, received.path
        place_durably(received.path, path)
        return path, None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _Refused(StoreStatus.OUT_OF_RESOURCES, f"disk full writing {sop_uid}: {exc}") from exc
        raise _Refused(StoreStatus.OUT_OF_RESOURCES, f"could not write {sop_uid} to the spool: {exc}") from exc


def _record(
    catalog: Catalog,
    ds: Dataset,
    event: Event,
    received: ReceivedFile,
    placed: tuple[Path, Path | None],
    uids: tuple[str, str, str],
) -> None:
    """The catalog row; on failure no new row and no new file (a resend's acknowledged copy and row are kept)."""
    (path, staged), (study_uid, series_uid, sop_uid) = placed, uids
    try:
        catalog.intake.record_instance(
            InstanceMeta(
                patient_id=str(ds.get("PatientID", "") or "")[:64],
                study_uid=study_uid,
                series_uid=series_uid,
                sop_uid=sop_uid,
                sop_class_uid=event.context.abstract_syntax,
                transfer_syntax=str(event.context.transfer_syntax),
                modality=str(ds.get("Modality", "") or ""),
                series_description=str(ds.get("SeriesDescription", "") or ""),
                instance_number=_instance_number(ds),
                path=str(path),
                size=received.received,
                calling_aet=event.assoc.requestor.ae_title,
            )
        )
    except SeriesBeingPurged as exc:  # nothing kept: the purge would delete it next; the SCU sends it later
        (staged or path).unlink(missing_ok=True)
        raise _Refused(StoreStatus.OUT_OF_RESOURCES, str(exc)) from exc
    except Exception as exc:
        # The SCU got a failure and will resend; the spool stays consistent.
        (staged or path).unlink(missing_ok=True)
        log.exception("catalog write failed for %s", sop_uid)
        raise _Refused(StoreStatus.PROCESSING_FAILURE, f"catalog write failed: {exc}") from exc


def handle_echo(event: Event) -> int:
    return EchoStatus.SUCCESS.value


def handle_requested(event: Event, admission: Admission, audit: AssociationAudit | None = None) -> None:
    """Before negotiation: refuse with a proper A-ASSOCIATE-RJ what pynetdicom's own checks cannot know."""
    calling = str(event.assoc.requestor.primitive.calling_ae_title).strip()
    address = str(event.assoc.requestor.address)
    refusal = admission.association_refusal(calling, address)
    if refusal is None:
        return
    (result, source, diagnostic), reason = refusal
    log.warning("association from %s (%s) rejected: %s", calling, address, reason)
    event.assoc.acse.send_reject(result, source, diagnostic)
    event.assoc.is_rejected = True
    if audit is not None:
        audit.rejected_by_node(event, reason)
    event.assoc.kill()


def handle_store_counted(event: Event, audit: AssociationAudit, **kwargs: Any) -> int:
    """handle_store, then count the answer for the association audit and /metrics (in memory only)."""
    status = handle_store(event, **kwargs)
    audit.count_store(event, status)
    return status


def build_ae(settings: NodeSettings, forward_only: Sequence[str] = ()) -> AE:
    """The SCP's Application Entity with its contexts and association policy; ``forward_only``: SOP classes taken
    only to be passed on (the dose reports, when some rule forwards originals), uncompressed little endian."""
    ae = AE(ae_title=settings.ae_title)
    syntaxes = decodable_transfer_syntaxes()
    log_refused_syntaxes()
    for sop_class in ACCEPTED_SOP_CLASSES:
        ae.add_supported_context(sop_class, syntaxes)
    for sop_class in forward_only:
        ae.add_supported_context(sop_class, [dcm_uid.ExplicitVRLittleEndian, dcm_uid.ImplicitVRLittleEndian])
    ae.add_supported_context(Verification)
    ae.require_called_aet = True
    if settings.allowed_calling_aets:
        ae.require_calling_aet = list(settings.allowed_calling_aets)
    ae.maximum_pdu_size = settings.max_pdu
    ae.maximum_associations = settings.max_associations
    return ae


def start_scp(
    settings: NodeSettings,
    spool: Spool,
    catalog: Catalog,
    admission: Admission | None = None,
    audit: AssociationAudit | None = None,
    forward_only: Sequence[str] = (),
) -> ThreadedAssociationServer:
    """Start listening (non-blocking) with handlers bound to the spool, the catalog, the admission rules and the
    association audit; ``forward_only`` as for :func:`build_ae`."""
    ae = build_ae(settings, forward_only)
    if forward_only:
        names = ", ".join(dcm_uid.UID(uid).name for uid in forward_only)
        log.info("SCP accepts %s only to pass them on (a rule forwards originals)", names)
    admission = admission or Admission(
        settings,
        spool.root,
        catalog.views.pending_series,
        known_series=lambda uid: catalog.views.series_state(uid) is not None,
    )
    audit = audit or AssociationAudit(catalog)
    sink = ReceiveSink(spool.incoming, settings.max_dataset_mb)
    stream_received_datasets(ae, sink)
    store = partial(handle_store_counted, audit=audit, spool=spool, catalog=catalog, sink=sink, admission=admission)
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, partial(handle_requested, admission=admission, audit=audit)),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, store),
        (evt.EVT_REJECTED, audit.on_rejected),
        (evt.EVT_ACCEPTED, audit.on_accepted),
        (evt.EVT_RELEASED, audit.on_released),
        (evt.EVT_ABORTED, audit.on_aborted),
        (evt.EVT_CONN_CLOSE, audit.on_closed),
        (evt.EVT_CONN_CLOSE, lambda event: sink.drop_association(event.assoc)),
        NODELAY_HANDLER,
    ]
    tls = server_tls_context(settings.tls)
    server = start_server(ae, (settings.host, settings.port), tls, handlers)
    log.info(
        "SCP %s listening on %s:%d%s (%d transfer syntaxes, calling AE allowlist: %s, peer allowlists: %s)",
        settings.ae_title,
        settings.host,
        settings.port,
        " with TLS" + (" (client certificates required)" if settings.tls.require_client_cert else "") if tls else "",
        len(next(c for c in ae.supported_contexts if c.abstract_syntax == CT_IMAGE_STORAGE).transfer_syntax),
        ",".join(settings.allowed_calling_aets) or "any",
        ",".join(settings.allowed_peers) or "none",
    )
    return server
