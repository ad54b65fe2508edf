"""The configuration's sections, one model each, in flow order (receive → complete → model → derive → send)."""

from __future__ import annotations

import ipaddress
import re
import string
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash/control chars

AETitle = Annotated[str, Field(min_length=1, max_length=16)]


def check_ae(value: str) -> str:
    if not _AE_RE.match(value) or not value.strip():
        raise ValueError(f"{value!r} is not a valid AE title (1-16 printable characters, no backslash)")
    return value.strip()


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TLSSettings(Section):
    """DICOM TLS (PS3.15 B.1): the node's certificate, and optionally client-certificate verification."""

    enabled: bool = False
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _files(self) -> TLSSettings:
        if self.enabled and not (self.cert_file and self.key_file):
            raise ValueError("tls.enabled needs cert_file and key_file")
        if self.require_client_cert and not self.ca_file:
            raise ValueError("tls.require_client_cert needs ca_file (the CA that signs client certificates)")
        return self


class NodeSettings(Section):
    """The SCP: who we are, where we listen, where we keep data."""

    ae_title: AETitle = "DENOISE"
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=1, le=65535)
    data_dir: Path = Path("/var/lib/denoise-node")
    spool_dir: Path | None = Field(
        None, description="received and derived files; default data_dir. Several nodes on one catalog share one"
    )
    role: Literal["all", "receive", "worker"] = Field(
        "all", description="receive: SCP only; worker: denoise and send only; all: both (docs/install.md)"
    )
    node_id: str = Field("", max_length=200, description="this node's name in claims; default host:data_dir")
    allowed_calling_aets: list[AETitle] = Field(default_factory=list)
    allowed_peers: dict[str, list[str]] = Field(default_factory=dict)
    max_pdu: int = Field(262144, ge=0, description="largest PDU a peer may send, bytes (0 = unlimited)")
    max_associations: int = Field(16, ge=1)
    max_dataset_mb: float = Field(1024.0, gt=0)
    max_image_pixels: int = Field(
        4096 * 4096, ge=1, description="Rows × Columns one frame may declare; checked before any decoding"
    )
    min_free_mb: float = Field(1024.0, ge=0)
    max_pending_series: int = Field(0, ge=0, description="0 = unlimited")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per line (ops/logs.py)")
    tls: TLSSettings = Field(default_factory=lambda: TLSSettings())

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: check_ae(v)))
    _spool = field_validator("spool_dir", mode="before")(classmethod(lambda cls, v: v or None))

    @field_validator("allowed_calling_aets")
    @classmethod
    def _aes(cls, values: list[str]) -> list[str]:
        return [check_ae(v) for v in values]

    @field_validator("allowed_peers")
    @classmethod
    def _peers(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        checked = {}
        for ae, networks in value.items():
            for net in networks:
                try:
                    ipaddress.ip_network(net, strict=False)
                except ValueError as exc:
                    raise ValueError(f"allowed_peers.{ae}: {net!r} is not an IP address or network") from exc
            checked[check_ae(ae)] = list(networks)
        return checked


class SeriesSettings(Section):
    quiet_period_s: float = Field(10.0, gt=0)
    poll_interval_s: float = Field(1.0, gt=0)
    max_attempts: int = Field(3, ge=1, description="processing attempts (the worker died each time) before FAILED")
    isolate_decoding: bool = Field(True, description="decode pixels in a child process (denoise/decode_process.py)")
    decode_timeout_s: float = Field(60.0, gt=0, description="a slice whose decoding takes longer fails its series")
    decode_memory_mb: int = Field(4096, ge=0, description="address-space limit of the decoding child (0 = none)")
    claim_lease_s: float = Field(
        120.0, ge=2, description="a processing claim not renewed for this long is taken over by another worker"
    )


class ModelSettings(Section):
    path: str = ""
    name: str = ""
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$", description="auto, cpu, cuda or cuda:N")
    tile_size: int = Field(272, ge=32)
    tile_overlap: int = Field(32, ge=0)
    batch_size: int = Field(4, ge=1)
    half_precision: bool = Field(False, description="float16 on CUDA; off: fp32/TF32 until a GPU run shows it equal")
    compile: bool = False
    strength: float = Field(
        1.0, ge=0.0, le=1.0, description="output = input + strength · (model(input) − input), like vendor levels"
    )
    self_ensemble: int = Field(
        0,
        description="flips/turns of each tile averaged: 0 = the model's own setting (its metadata), 1 = off, 2, 4, 8 "
        "(N × the compute)",
    )
    target_noise_hu: float | None = Field(
        None,
        ge=0.0,
        description="leave about this much noise (HU, soft tissue) whatever the input's dose (denoise/noise_target.py);"
        " unset = the model's own, 0 = none (full strength)",
    )

    @model_validator(mode="after")
    def _tiles(self) -> ModelSettings:
        if self.target_noise_hu and self.strength != 1.0:
            raise ValueError(
                f"strength={self.strength:g} and target_noise_hu={self.target_noise_hu:g} both set the blend of output"
                " and input: set one of them"
            )
        if self.self_ensemble not in (0, 1, 2, 4, 8):
            raise ValueError(f"self_ensemble={self.self_ensemble} must be 0 (the model's own), 1, 2, 4 or 8")
        if self.tile_size % 4:
            raise ValueError(f"tile_size={self.tile_size} must be a multiple of 4 (two stride-2 stages)")
        if self.tile_overlap >= self.tile_size // 2:
            raise ValueError(f"tile_overlap={self.tile_overlap} must be less than half of tile_size")
        return self


# The placeholders of ``[derive] series_description`` (denoise/naming.py fills them in).
DESCRIPTION_FIELDS = ("source", "model", "version", "kind", "strength", "noise", "level", "ensemble")


def check_description_template(value: str) -> str:
    """A SeriesDescription template: text with placeholders of DESCRIPTION_FIELDS, no format specs (all are text)."""
    known = ", ".join("{" + f + "}" for f in DESCRIPTION_FIELDS)
    try:
        parsed = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid template ({exc}); placeholders: {known}") from exc
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in DESCRIPTION_FIELDS:
            raise ValueError(f"unknown placeholder {{{field}}} in {value!r}; placeholders: {known}")
        if spec or conversion:
            raise ValueError(f"{{{field}}} in {value!r} has a format spec or conversion: placeholders are text")
    if not value.strip():
        raise ValueError("an empty SeriesDescription template")
    return value


class DeriveSettings(Section):
    """What the derived series says about itself (denoise/derive.py, denoise/naming.py)."""

    series_description: str = Field(
        "{source} DN {model} {version} {level}",
        description="template, 64 characters at most once filled: the {source} part is cut first, never the rest",
    )
    series_number_offset: int = Field(
        1000, description="a power of ten: derived SeriesNumbers start there (denoise/naming.py: never collide)"
    )
    notice: str | None = Field(
        None, description="ImageComments, DerivationDescription and the report; unset = the model's own, '' = none"
    )
    manufacturer: str = "dicom-denoise-node"
    institution_name: str = ""

    _template = field_validator("series_description")(classmethod(lambda cls, v: check_description_template(v)))

    @model_validator(mode="before")
    @classmethod
    def _replaced(cls, data: object) -> object:
        if isinstance(data, dict) and "description_suffix" in data:
            raise ValueError(
                "description_suffix was replaced by series_description, a template such as "
                '"{source} DN {model} {version} {level}" (docs/install.md)'
            )
        return data

    @field_validator("series_number_offset")
    @classmethod
    def _power_of_ten(cls, value: int) -> int:
        if value < 10 or 10 ** (len(str(value)) - 1) != value:
            raise ValueError(f"{value} is not a power of ten of 10 or more (10, 100, 1000, 10000, …)")
        return value


class GuardSettings(Section):
    """The consistency guard run on every denoised slice (guard.py documents each statistic)."""

    enabled: bool = True
    policy: Literal["mark", "hold"] = "mark"
    max_mean_shift_hu: float = Field(15.0, gt=0)
    block_px: int = Field(32, ge=8)
    blob_sigmas_px: list[float] = Field(default_factory=lambda: [2.0, 4.0], min_length=1)
    blob_z: float = Field(5.0, gt=0)
    blob_min_hu: float = Field(15.0, gt=0)
    blob_min_area_px: int = Field(8, ge=1)
    edge_hu_per_px: float = Field(40.0, gt=0)
    max_edge_correlation: float = Field(0.5, gt=0, le=1)
    hu_floor: float = -1100.0
    hu_margin: float = Field(100.0, ge=0)


class ReportSettings(Section):
    """The quality report (Comprehensive SR) sent with each derived series."""

    enabled: bool = True
    notice: str = "Denoised by software; not for primary diagnosis."


class SendSettings(Section):
    max_attempts: int = Field(5, ge=1)
    backoff_s: float = Field(30.0, gt=0)
    backoff_max_s: float = Field(3600.0, gt=0)
    timeout_s: float = Field(60.0, gt=0)
    lease_s: float = Field(
        600.0, ge=10, description="a send attempt not finished in this long is taken over by another worker"
    )


class CatalogSettings(Section):
    url: str = ""


# Never denoised: accepted by the SCP only when some rule forwards originals, to be passed on with them (the dose
# reports CT scanners send beside their images).
FORWARD_ONLY_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.88.67",  # X-Ray Radiation Dose SR Storage
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR Storage
)


class Rule(Section):
    """A routing rule: which received series are denoised, where the result goes, and how long to wait.

    A series is denoised when one of its instances meets every condition of a rule (first rule wins). CT (and
    Enhanced CT) Image Storage with Modality CT only, and ``image_type`` must lead the instance's ImageType (a value
    may name alternatives, ``AXIAL|VOLUME``), so localizers and derived images never match. Patterns are
    case-insensitive regular expressions searched in the attribute; thresholds accept an instance whose value is at
    or below them (and reject one without it).
    """

    name: str = Field(min_length=1, max_length=64)
    image_type: list[str] = Field(default_factory=lambda: ["ORIGINAL", "PRIMARY", "AXIAL|VOLUME"])
    series_description: str = ""
    protocol_name: str = ""
    calling_aets: list[str] = Field(default_factory=list)
    max_exposure_mas: float | None = Field(None, gt=0, description="Exposure (0018,1152) in mAs, at or below")
    max_ctdivol: float | None = Field(None, gt=0, description="CTDIvol (0018,9345) in mGy, at or below")
    destinations: list[str] = Field(default_factory=list, description="destination names; empty = all")
    forward_originals: list[str] = Field(
        default_factory=list,
        description="destination names that also get the received series as it came (and the dose reports)",
    )
    quiet_period_s: float | None = Field(None, gt=0, description="overrides [series] quiet_period_s")
    strength: float | None = Field(None, ge=0.0, le=1.0, description="overrides [model] strength for this rule")
    model: str = Field("", description="a model of the registry by name ([model] path); empty = the [model] one")
    fall_through: bool = Field(
        False, description="the rules after this one are tried too: each that matches makes its own derived series"
    )

    @field_validator("series_description", "protocol_name")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from exc
        return value

    @field_validator("image_type")
    @classmethod
    def _upper(cls, values: list[str]) -> list[str]:
        return [v.strip().upper() for v in values]


DEFAULT_RULE = Rule(name="default")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (127.0.0.0/8, ::1, localhost): a name or address that could be any
    other interface is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpSettings(Section):
    """Health, Prometheus metrics, the series list and the status page over HTTP (ops/http_status.py); loopback
    unless an admin opens it, and then only with a token or a password."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535, description="0 = any free port (tests)")
    token: SecretStr = Field(
        SecretStr(""), description="when set, every path but /healthz wants 'Authorization: Bearer <token>'"
    )
    basic_auth: SecretStr = Field(
        SecretStr(""), description='"user:password": when set, every path but /healthz accepts basic auth'
    )
    show_patient_data: bool = Field(False, description="the status page shows patient names and IDs")

    @field_validator("basic_auth")
    @classmethod
    def _user_password(cls, value: SecretStr) -> SecretStr:
        user, _, password = value.get_secret_value().partition(":")
        if value.get_secret_value() and not (user and password):
            raise ValueError('basic_auth must be "user:password", both non-empty')
        return value

    @model_validator(mode="after")
    def _exposed(self) -> HttpSettings:
        secret = self.token.get_secret_value() or self.basic_auth.get_secret_value()
        if self.enabled and not is_loopback(self.host) and not secret:
            raise ValueError(
                f"http.host = {self.host!r} is not a loopback address: set http.token or http.basic_auth, so that "
                "the status page and the series list are not open to the network"
            )
        return self


NotifyEvent = Literal["series_failed", "guard_flagged", "disk_low"]


class NotifySettings(Section):
    """Webhook notifications (ops/notify.py): a series FAILED, slices flagged by the guard, the disk below
    ``[node] min_free_mb`` (and back above it). Off while ``webhook_url`` is empty."""

    webhook_url: list[str] = Field(default_factory=list, description="one URL or a list; each gets every event")
    events: list[NotifyEvent] = Field(default_factory=lambda: ["series_failed", "guard_flagged", "disk_low"])
    headers: dict[str, str] = Field(default_factory=dict, description="sent with every POST (e.g. Authorization)")
    timeout_s: float = Field(10.0, gt=0)
    max_attempts: int = Field(8, ge=1, description="POSTs of one notification before it is given up")
    backoff_s: float = Field(30.0, gt=0, description="first wait after a failed POST; doubles up to backoff_max_s")
    backoff_max_s: float = Field(3600.0, gt=0)
    poll_interval_s: float = Field(5.0, gt=0, description="how often the catalog and the disk are looked at")
    max_age_h: float = Field(
        24.0, gt=0, description="events older than this are not announced (notifications just turned on, a long stop)"
    )

    _one_url = field_validator("webhook_url", mode="before")(
        classmethod(lambda cls, v: [v] if isinstance(v, str) else v)
    )

    @field_validator("webhook_url")
    @classmethod
    def _urls(cls, values: list[str]) -> list[str]:
        for url in values:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return values

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url)


class RetentionSettings(Section):
    """When spool data of finished series is removed (FAILED series are kept until retried or purged)."""

    sent_days: float = Field(7.0, ge=0)
    check_interval_s: float = Field(3600.0, gt=0)
