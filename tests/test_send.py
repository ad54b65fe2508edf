"""The C-STORE SCU against dcmtk storescp: every instance arrives. Its socket keeps Nagle's algorithm on (send.py
explains the pynetdicom race that TCP_NODELAY exposes on the requestor side)."""

from __future__ import annotations

import socket

from pydicom import dcmread
from pynetdicom import AE

from dicom_denoise_node import send
from dicom_denoise_node.config import Destination
from tests.peers import write_ct_series


def _nodelay(assoc) -> int:
    return assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_send_files_delivers_every_instance_with_nagle_kept_on(tmp_path, dcmtk_pacs, monkeypatch):
    files = write_ct_series(tmp_path / "series", 4, rows=64, columns=64)
    seen: list[int] = []

    class SpyAE(AE):
        def associate(self, *args, **kwargs):
            assoc = super().associate(*args, **kwargs)
            seen.append(_nodelay(assoc))
            return assoc

    monkeypatch.setattr(send, "AE", SpyAE)
    dest = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=dcmtk_pacs.port)
    assert send.send_files(files, dest, "DENOISE") == 4
    assert seen == [0]
    received = {str(dcmread(p).SOPInstanceUID) for p in dcmtk_pacs.wait_for_files(4, timeout=30)}
    assert received == {str(dcmread(p).SOPInstanceUID) for p in files}
