"""Where derived series go: a DIMSE peer (C-STORE) or a DICOMweb service (STOW-RS), validated per kind."""

from __future__ import annotations

import ssl
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dicom_denoise_node.config.sections import AETitle, Section, check_ae

DestinationKind = Literal["dimse", "stow-rs"]

_DIMSE_KEYS = ("ae_title", "host", "port")
_STOW_KEYS = ("url", "username", "password", "token")


class DestinationTLS(Section):
    """DICOM TLS to a DIMSE destination (PS3.15 B.1, TLS 1.2 or newer), written ``[destinations.tls]`` under its
    ``[[destinations]]`` like the SCP's ``[node.tls]``: the peer's certificate is verified against ``ca_file`` (else
    the system's trusted CAs) and, with ``verify_hostname``, must name ``host``; ``cert_file``/``key_file`` are this
    node's client certificate, for peers that require one."""

    enabled: bool = False
    ca_file: str = Field("", description="PEM file of the CAs trusted for this peer; empty = the system's CAs")
    cert_file: str = Field("", description="this node's client certificate (PEM), with key_file")
    key_file: str = ""
    verify_hostname: bool = Field(True, description="the peer's certificate must name host (DNS name or IP address)")

    @model_validator(mode="after")
    def _files(self) -> DestinationTLS:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file go together (the client certificate and its private key)")
        if self.enabled:
            self.ssl_context()  # the files are read at start: a missing or broken one is a config error
        return self

    def ssl_context(self) -> ssl.SSLContext:
        """The client's SSL context: TLS 1.2+, the peer verified against ``ca_file`` (or the system's CAs) and its
        host name checked unless ``verify_hostname`` is off. ValueError names the files that could not be loaded."""
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file or None)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.check_hostname = self.verify_hostname
            if self.cert_file:
                ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            files = " / ".join(f for f in (self.ca_file, self.cert_file, self.key_file) if f)
            raise ValueError(f"cannot load {files or 'the system CAs'}: {exc}") from exc
        return ctx


class Destination(Section):
    """Where derived series go: a C-STORE SCP (``kind = "dimse"``, the default) or a DICOMweb service that takes
    STOW-RS (``kind = "stow-rs"``). Keys of the other kind are errors, so a half-converted block is found at start.

    Passwords and tokens are ``SecretStr``: they print as ``**********`` in reprs, logs and error messages.
    """

    kind: DestinationKind = "dimse"
    name: str = ""
    ae_title: AETitle | None = Field(None, validate_default=True)
    host: str | None = Field(None, validate_default=True)
    port: int | None = Field(None, ge=1, le=65535, validate_default=True)
    url: str = Field("", validate_default=True, description="DICOMweb service root, e.g. http://pacs:8042/dicom-web")
    username: str = Field("", validate_default=True, description="HTTP basic auth, with password")
    password: SecretStr = Field(SecretStr(""), validate_default=True)
    token: SecretStr = Field(SecretStr(""), validate_default=True, description="HTTP bearer token")
    timeout_s: float | None = Field(None, gt=0, description="per request or association; default [send] timeout_s")
    tls: DestinationTLS = Field(default_factory=lambda: DestinationTLS())

    @field_validator(*_DIMSE_KEYS)
    @classmethod
    def _dimse_keys(cls, value: Any, info: ValidationInfo) -> Any:
        kind = info.data.get("kind")
        if kind is None:  # kind itself is invalid: that is the one error to report
            return value
        if kind == "dimse" and value is None:
            raise ValueError(f"a DIMSE destination needs {info.field_name} (ae_title, host and port)")
        if kind != "dimse" and value is not None:
            raise ValueError(f'not a key of kind = "{kind}" (a DICOMweb destination is reached at its url)')
        return check_ae(value) if info.field_name == "ae_title" and value is not None else value

    @field_validator(*_STOW_KEYS)
    @classmethod
    def _stow_keys(cls, value: Any, info: ValidationInfo) -> Any:
        kind = info.data.get("kind")
        if kind is None:
            return value
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if kind != "stow-rs":
            if text:
                raise ValueError(f'not a key of kind = "{kind}" (set kind = "stow-rs" for a DICOMweb destination)')
            return value
        if info.field_name == "url":
            return _check_url(text)
        if info.field_name == "password" and bool(text) != bool(info.data.get("username")):
            raise ValueError("HTTP basic auth needs both username and password")
        if info.field_name == "token" and text and info.data.get("username"):
            raise ValueError("choose one authentication: username and password (basic) or token (bearer)")
        return value

    @model_validator(mode="after")
    def _tls_kind(self) -> Destination:
        if self.tls.enabled and self.kind != "dimse":
            raise ValueError(f'tls: DICOM TLS is for kind = "dimse"; a {self.kind} destination uses an https:// url')
        return self

    @property
    def key(self) -> str:
        """Stable identity used in the catalog's delivery records (never holds a secret: see _check_url)."""
        if self.name:
            return self.name
        return self.url if self.kind == "stow-rs" else f"{self.ae_title}@{self.host}:{self.port}"


def _check_url(url: str) -> str:
    if not url:
        raise ValueError('kind = "stow-rs" needs url, the DICOMweb service root (e.g. http://pacs:8042/dicom-web)')
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    if parts.username or parts.password:
        raise ValueError("credentials do not belong in url (it is logged): use username and password, or token")
    if parts.query or parts.fragment:
        raise ValueError("the service root takes no ?query or #fragment")
    return url.rstrip("/")
