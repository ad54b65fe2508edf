"""Which compressed transfer syntaxes this installation can decode, and what to install for the others.

The receiver offers only what the worker can decode (a scanner that proposes several syntaxes then picks one we
accept; one that proposes only an undecodable one gets its presentation context rejected, and the node logs why
at start-up). The worker refuses an undecodable file with the same reason. The codecs and their licences:

- pylibjpeg-openjpeg (JPEG 2000), pylibjpeg-rle (RLE), pyjpegls (JPEG-LS): MIT, always installed;
- python-gdcm (GDCM, BSD; its Python wheel Apache-2.0): always installed, so JPEG Lossless (Process 14 and SV1: what
  most CT scanners compress with) is decoded by a plain ``pip install``, through pydicom's GDCM plugin (tried
  first);
- pylibjpeg-libjpeg (JPEG Lossless too): **GPL-3.0**, so it stays the optional extra ``jpeg-gpl``
  (``pip install 'dicom-denoise-node[jpeg-gpl]'``), installed only by choice; pydicom falls back to it when GDCM
  cannot decode a file.
"""

from __future__ import annotations

import logging

from pydicom import uid as dcm_uid
from pydicom.pixels import get_decoder

log = logging.getLogger(__name__)

GPL_EXTRA = "jpeg-gpl"
# The lossless JPEG syntaxes CT scanners send: decoded by GDCM (a dependency), or by the GPL extra.
JPEG_LOSSLESS_SYNTAXES = {str(dcm_uid.JPEGLossless), str(dcm_uid.JPEGLosslessSV1)}


def decodable(syntax: str) -> bool:
    """Whether pixel data in ``syntax`` can be decoded with the installed plugins (native syntaxes always)."""
    ts = dcm_uid.UID(syntax)
    if not ts.is_transfer_syntax:
        return False
    if not ts.is_encapsulated:
        return True
    try:
        return bool(get_decoder(ts).is_available)
    except NotImplementedError:
        return False


def decodable_transfer_syntaxes() -> list[str]:
    """Every transfer syntax whose pixel data the worker can decode with the installed plugins."""
    return [str(ts) for ts in dcm_uid.AllTransferSyntaxes if ts.is_transfer_syntax and decodable(ts)]


def missing_codec(syntax: str) -> str | None:
    """Why pixel data in ``syntax`` cannot be decoded here, naming what to install; None when it can."""
    if decodable(syntax):
        return None
    name = dcm_uid.UID(syntax).name
    if syntax in JPEG_LOSSLESS_SYNTAXES:
        return (
            f"{name} ({syntax}) needs a JPEG Lossless decoder: python-gdcm (a dependency of the node, BSD) is not "
            f"installed or does not load (pip install python-gdcm), and the optional pylibjpeg-libjpeg (GPL-3.0) "
            f"is not installed either (pip install 'dicom-denoise-node[{GPL_EXTRA}]')"
        )
    return f"no decoder for {name} ({syntax}) is installed"


def log_refused_syntaxes() -> None:
    """Say once, at start-up, which plugin decodes JPEG Lossless here, or why a scanner cannot use it."""
    for syntax in sorted(JPEG_LOSSLESS_SYNTAXES):
        reason = missing_codec(syntax)
        if reason:
            log.warning("not accepted by the SCP: %s", reason)
        else:
            plugins = get_decoder(dcm_uid.UID(syntax)).available_plugins  # pydicom tries gdcm first
            log.info("%s accepted, decoded by the plugins %s", dcm_uid.UID(syntax).name, ", ".join(plugins))
