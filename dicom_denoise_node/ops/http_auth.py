"""Who may read the HTTP face: anyone on loopback by default; with ``[http] token`` or ``basic_auth`` set (which a
non-loopback ``[http] host`` requires, config/sections.py), only a request that carries one of them.

A bearer token suits scripts and Prometheus (``Authorization: Bearer …``), basic auth a browser. ``/healthz`` stays
open (OPEN_PATHS): load balancers and `denoise-node status` probe it, and it shows no patient data. Secrets are
compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging

from dicom_denoise_node.config import HttpSettings

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz"})
REALM = "denoise-node"


class HttpAuth:
    """The configured credentials and the check of one request's ``Authorization`` header."""

    def __init__(self, settings: HttpSettings) -> None:
        self.token = settings.token.get_secret_value().encode()
        self.basic = settings.basic_auth.get_secret_value().encode()

    @property
    def required(self) -> bool:
        return bool(self.token or self.basic)

    def allows(self, path: str, authorization: str | None) -> bool:
        """Whether a request for ``path`` with this ``Authorization`` header may be answered."""
        if not self.required or path in OPEN_PATHS:
            return True
        scheme, _, value = (authorization or "").strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and self.token:
            return hmac.compare_digest(value.encode(), self.token)
        if scheme.lower() == "basic" and self.basic:
            try:
                given = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(given, self.basic)
        return False

    def challenge(self) -> str:
        """The WWW-Authenticate header of a refusal: basic when a browser can log in, else bearer."""
        return f'Basic realm="{REALM}"' if self.basic else f'Bearer realm="{REALM}"'
