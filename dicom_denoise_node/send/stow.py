"""④ The STOW-RS sender: POST a derived series to a DICOMweb service and check every instance's status.

An HTTP 200 does not mean the series is stored: the store-instances response (PS3.18 10.5.3) lists each instance
in ReferencedSOPSequence (stored, maybe with a WarningReason) or FailedSOPSequence (with a FailureReason), and a
server answers 202 or 409 when only some made it. So only an instance the response names as stored is confirmed
(``on_stored``, the same per-instance ledger as DIMSE); a failed or unmentioned one is a SendError, retried later.

Instances go in batches of BATCH_SIZE per request (one request per series would hold the whole series, twice, in
memory), all to ``{url}/studies/{StudyInstanceUID of the first instance}``: an instance that names another study is
refused by the server instead of being filed there. The multipart encoding is dicomweb-client's; its own HTTP
retries are off, because retries are data in the catalog (attempts, backoff), as for DIMSE.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import requests
from dicomweb_client import DICOMwebClient
from pydicom import Dataset, dcmread

from dicom_denoise_node import __version__
from dicom_denoise_node.config import Destination
from dicom_denoise_node.send.scu import SendError

log = logging.getLogger(__name__)

BATCH_SIZE = 16  # instances per STOW-RS request

# PS3.18 table 10.5.3-2 / PS3.4 C-STORE statuses, for messages a user can act on
FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
    0xC122: "transfer syntax not supported",
}
WARNING_REASONS = {0xB000: "coercion of data elements", 0xB006: "elements discarded", 0xB007: "data set mismatch"}
HTTP_HINTS = {
    401: "check username and password, or token",
    403: "the credentials may not store",
    404: "is url the DICOMweb service root?",
    413: "the server limits the request size",
}


def stow_files(
    files: list[Path],
    dest: Destination,
    timeout_s: float = 60.0,
    on_stored: Callable[[str], None] | None = None,
) -> int:
    """Store every file with STOW-RS in batches; return how many the server confirmed.

    ``on_stored`` gets each SOP Instance UID the server listed as stored (with or without a warning) as soon as its
    batch is answered. Raises SendError on an HTTP error (the batches before it stay confirmed) or, after the last
    batch, naming every instance the server failed or did not mention.
    """
    if not files:
        return 0
    study_uid = str(dcmread(files[0], stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID)
    problems: list[str] = []
    stored = 0
    with _session(dest) as session:
        client = DICOMwebClient(dest.url, session=session, timeout=timeout_s)
        client.set_http_retry_params(retry=False)
        for start in range(0, len(files), BATCH_SIZE):
            datasets = [dcmread(path) for path in files[start : start + BATCH_SIZE]]
            response = _post(client, dest, datasets, study_uid, timeout_s)
            confirmed, failed = _statuses(response, [str(ds.SOPInstanceUID) for ds in datasets], dest)
            for sop_uid in confirmed:
                if on_stored is not None:
                    on_stored(sop_uid)
            stored += len(confirmed)
            problems += failed
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise SendError(f"{dest.key} did not store {len(problems)} of {len(files)} instances: {shown}")
    return stored


def probe(dest: Destination, timeout_s: float = 30.0) -> str:
    """What `denoise-node echo` does for a DICOMweb destination (C-ECHO does not apply): one QIDO-RS search for at
    most one study, with the destination's own authentication. Returns a one-line answer; raises SendError."""
    with _session(dest) as session:
        client = DICOMwebClient(dest.url, session=session, timeout=timeout_s)
        try:
            found = client.search_for_studies(limit=1)
        except requests.HTTPError as exc:
            raise SendError(_http_error(dest, exc.response).replace("STOW-RS", "QIDO-RS")) from None
        except requests.Timeout:
            raise SendError(f"{dest.key}: no QIDO-RS answer within {timeout_s:g} s") from None
        except requests.ConnectionError as exc:
            raise SendError(f"{dest.key}: cannot reach {dest.url} ({_root_cause(exc)})") from None
    return f"QIDO-RS answered ({len(found)} study listed with limit=1): reachable, credentials accepted"


def _session(dest: Destination) -> requests.Session:
    session = requests.Session()
    session.headers["Accept"] = "application/dicom+json"
    session.headers["User-Agent"] = f"dicom-denoise-node/{__version__}"
    if dest.username:
        session.auth = (dest.username, dest.password.get_secret_value())
    elif dest.token.get_secret_value():
        session.headers["Authorization"] = f"Bearer {dest.token.get_secret_value()}"
    return session


def _post(
    client: DICOMwebClient, dest: Destination, datasets: Sequence[Dataset], study_uid: str, timeout_s: float
) -> Dataset:
    """One STOW-RS request; the response data set, also for a 400/409 that lists which instances failed."""
    try:
        return client.store_instances(datasets, study_instance_uid=study_uid)
    except requests.HTTPError as exc:
        listed = _response_dataset(exc.response)
        if listed is None:
            raise SendError(_http_error(dest, exc.response)) from None
        return listed
    except requests.Timeout:
        raise SendError(f"{dest.key}: no STOW-RS answer within {timeout_s:g} s") from None
    except requests.ConnectionError as exc:
        raise SendError(f"{dest.key}: cannot reach {dest.url} ({_root_cause(exc)})") from None


def _response_dataset(response: requests.Response | None) -> Dataset | None:
    """The store-instances response in an error answer's body (Orthanc sends it without a Content-Type)."""
    if response is None:
        return None
    try:
        listed = Dataset.from_json(response.text)
    except (ValueError, KeyError, TypeError, AttributeError):  # not DICOM JSON: an error page, an empty body
        return None
    return listed if "FailedSOPSequence" in listed or "ReferencedSOPSequence" in listed else None


def _http_error(dest: Destination, response: requests.Response | None) -> str:
    if response is None:
        return f"{dest.key}: STOW-RS failed without an HTTP answer"
    status = response.status_code
    hint = HTTP_HINTS.get(status, "see the server's log" if status >= 500 else "")
    return f"{dest.key}: STOW-RS answered HTTP {status} {response.reason}" + (f" ({hint})" if hint else "")


def _statuses(response: Dataset, sent: list[str], dest: Destination) -> tuple[list[str], list[str]]:
    """(confirmed SOP Instance UIDs, one problem line per instance that was not stored), in the order sent."""
    failed = {str(item.ReferencedSOPInstanceUID): item for item in response.get("FailedSOPSequence", [])}
    stored = {str(item.ReferencedSOPInstanceUID): item for item in response.get("ReferencedSOPSequence", [])}
    confirmed, problems = [], []
    for sop_uid in sent:
        if sop_uid in failed:
            code = int(failed[sop_uid].get("FailureReason", 0))
            problems.append(f"{sop_uid} failed with 0x{code:04X} {FAILURE_REASONS.get(code, '')}".rstrip())
        elif sop_uid in stored:
            code = int(stored[sop_uid].get("WarningReason", 0))
            if code:
                log.warning(
                    "%s stored %s with warning 0x%04X %s", dest.key, sop_uid, code, WARNING_REASONS.get(code, "")
                )
            confirmed.append(sop_uid)
        else:
            problems.append(f"{sop_uid} has no status in the response")
    return confirmed, problems


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a requests error ("Connection refused" rather than a chain of wrappers)."""
    while exc.__context__ is not None or exc.__cause__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return str(exc) or type(exc).__name__
