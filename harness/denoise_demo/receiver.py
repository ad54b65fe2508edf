"""The demo's fallback PACS when Orthanc is not installed: a pynetdicom C-STORE SCP that writes each object to a folder.

It runs in the demo's own process (threads), so stopping it cannot leave a process behind. Files are written
atomically (temporary name, then rename) so the demo never reads half a file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger(__name__)

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110


class FolderPACS:
    """Accepts every storage SOP class on ``host:port`` and writes ``out_dir/<SOPInstanceUID>.dcm``."""

    def __init__(self, out_dir: Path, ae_title: str = "PACS", host: str = "127.0.0.1", port: int = 0) -> None:
        self.out_dir = Path(out_dir)
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self._server: ThreadedAssociationServer | None = None

    def start(self) -> None:
        """Bind and serve in background threads; ``port`` is the bound port afterwards (0 picks a free one)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._server = ae.start_server(
            (self.host, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        self.port = int(self._server.server_address[1])
        log.info("folder PACS %s listening on %s:%d, writing to %s", self.ae_title, self.host, self.port, self.out_dir)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def files(self) -> list[Path]:
        """Completely received objects."""
        return sorted(self.out_dir.glob("*.dcm"))

    def _on_store(self, event: Event) -> int:
        try:
            sop_uid = UID(str(event.request.AffectedSOPInstanceUID))
            if not sop_uid.is_valid:
                return PROCESSING_FAILURE
            target = self.out_dir / f"{sop_uid}.dcm"
            partial = target.with_suffix(".part")
            with open(partial, "wb") as fh:
                fh.write(event.encoded_dataset())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(partial, target)
        except OSError:
            log.exception("folder PACS could not store an object")
            return PROCESSING_FAILURE
        return SUCCESS

    def __enter__(self) -> FolderPACS:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
