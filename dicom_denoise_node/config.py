"""Typed settings for the node, read once at start from one TOML file plus environment overrides.

Why one place: every stage gets its settings passed down from here, so a typo in the file is found at start
(with the key and the file named) instead of hours later in a worker thread.

Precedence (highest first): environment variables ``DENOISE_NODE_<SECTION>__<KEY>``, the TOML file, defaults.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

log = logging.getLogger(__name__)

ENV_PREFIX = "DENOISE_NODE_"
CONFIG_ENV = "DENOISE_NODE_CONFIG"  # the config file path, read by the CLI
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash/control chars

AETitle = Annotated[str, Field(min_length=1, max_length=16)]


def _check_ae(value: str) -> str:
    if not _AE_RE.match(value) or not value.strip():
        raise ValueError(f"{value!r} is not a valid AE title (1-16 printable characters, no backslash)")
    return value.strip()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TLSSettings(_Section):
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


class NodeSettings(_Section):
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
        4096 * 4096, ge=1, description="Rows × Columns × frames an image may declare; checked before any decoding"
    )
    min_free_mb: float = Field(1024.0, ge=0)
    max_pending_series: int = Field(0, ge=0, description="0 = unlimited")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per line (ops/logs.py)")
    tls: TLSSettings = Field(default_factory=lambda: TLSSettings())

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae(v)))
    _spool = field_validator("spool_dir", mode="before")(classmethod(lambda cls, v: v or None))

    @field_validator("allowed_calling_aets")
    @classmethod
    def _aes(cls, values: list[str]) -> list[str]:
        return [_check_ae(v) for v in values]

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
            checked[_check_ae(ae)] = list(networks)
        return checked


DestinationKind = Literal["dimse", "stow-rs"]
_DIMSE_KEYS = ("ae_title", "host", "port")
_STOW_KEYS = ("url", "username", "password", "token")


class Destination(_Section):
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
        return _check_ae(value) if info.field_name == "ae_title" and value is not None else value

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


class SeriesSettings(_Section):
    quiet_period_s: float = Field(10.0, gt=0)
    poll_interval_s: float = Field(1.0, gt=0)
    max_attempts: int = Field(3, ge=1, description="processing attempts (the worker died each time) before FAILED")
    isolate_decoding: bool = Field(True, description="decode pixels in a child process (denoise/decode_process.py)")
    decode_timeout_s: float = Field(60.0, gt=0, description="a slice whose decoding takes longer fails its series")
    decode_memory_mb: int = Field(4096, ge=0, description="address-space limit of the decoding child (0 = none)")
    claim_lease_s: float = Field(
        120.0, ge=2, description="a processing claim not renewed for this long is taken over by another worker"
    )


class ModelSettings(_Section):
    path: str = ""
    name: str = ""
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$", description="auto, cpu, cuda or cuda:N")
    tile_size: int = Field(272, ge=32)
    tile_overlap: int = Field(32, ge=0)
    batch_size: int = Field(4, ge=1)
    half_precision: bool = True
    compile: bool = False
    strength: float = Field(
        1.0, ge=0.0, le=1.0, description="output = input + strength · (model(input) − input), like vendor levels"
    )

    @model_validator(mode="after")
    def _tiles(self) -> ModelSettings:
        if self.tile_size % 4:
            raise ValueError(f"tile_size={self.tile_size} must be a multiple of 4 (two stride-2 stages)")
        if self.tile_overlap >= self.tile_size // 2:
            raise ValueError(f"tile_overlap={self.tile_overlap} must be less than half of tile_size")
        return self


class DeriveSettings(_Section):
    series_number_offset: int = Field(1000, ge=0)
    description_suffix: str = " [denoised]"
    notice: str = ""
    manufacturer: str = "dicom-denoise-node"
    institution_name: str = ""


class GuardSettings(_Section):
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


class ReportSettings(_Section):
    """The quality report (Comprehensive SR) sent with each derived series."""

    enabled: bool = True
    notice: str = "Denoised by software; not for primary diagnosis."


class SendSettings(_Section):
    max_attempts: int = Field(5, ge=1)
    backoff_s: float = Field(30.0, gt=0)
    backoff_max_s: float = Field(3600.0, gt=0)
    timeout_s: float = Field(60.0, gt=0)


class CatalogSettings(_Section):
    url: str = ""


class Rule(_Section):
    """A routing rule: which received series are denoised, where the result goes, and how long to wait.

    A series is denoised when one of its instances meets every condition of a rule (first rule wins). CT (and
    Enhanced CT) Image Storage with Modality CT only, and ``image_type`` must lead the instance's ImageType, so
    localizers and derived images never match. Patterns are case-insensitive regular expressions searched in the
    attribute; thresholds accept an instance whose value is at or below them (and reject one without it).
    """

    name: str = Field(min_length=1, max_length=64)
    image_type: list[str] = Field(default_factory=lambda: ["ORIGINAL", "PRIMARY", "AXIAL"])
    series_description: str = ""
    protocol_name: str = ""
    calling_aets: list[str] = Field(default_factory=list)
    max_exposure_mas: float | None = Field(None, gt=0, description="Exposure (0018,1152) in mAs, at or below")
    max_ctdivol: float | None = Field(None, gt=0, description="CTDIvol (0018,9345) in mGy, at or below")
    destinations: list[str] = Field(default_factory=list, description="destination names; empty = all")
    quiet_period_s: float | None = Field(None, gt=0, description="overrides [series] quiet_period_s")

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


class HttpSettings(_Section):
    """Health, Prometheus metrics and the series list over HTTP; loopback unless an admin opens it."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535, description="0 = any free port (tests)")


class RetentionSettings(_Section):
    """When spool data of finished series is removed (FAILED series are kept until retried or purged)."""

    sent_days: float = Field(7.0, ge=0)
    check_interval_s: float = Field(3600.0, gt=0)


class Settings(BaseSettings):
    """The whole configuration. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    node: NodeSettings = Field(default_factory=NodeSettings)
    destinations: list[Destination] = Field(default_factory=list)
    series: SeriesSettings = Field(default_factory=SeriesSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    derive: DeriveSettings = Field(default_factory=DeriveSettings)
    guard: GuardSettings = Field(default_factory=GuardSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)
    send: SendSettings = Field(default_factory=SendSettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    rules: list[Rule] = Field(default_factory=list)
    http: HttpSettings = Field(default_factory=HttpSettings)

    @model_validator(mode="after")
    def _rule_names(self) -> Settings:
        names = {d.key for d in self.destinations}
        seen: set[str] = set()
        for i, rule in enumerate(self.rules):
            if rule.name in seen:
                raise ValueError(f"rules[{i}].name: {rule.name!r} is used by an earlier rule")
            seen.add(rule.name)
            unknown = [d for d in rule.destinations if d not in names]
            if unknown:
                raise ValueError(
                    f"rules[{i}].destinations: {', '.join(unknown)} not among the [[destinations]] "
                    f'({", ".join(sorted(names)) or "none configured"}); name a destination with name = "…"'
                )
        return self

    @property
    def active_rules(self) -> list[Rule]:
        """The configured rules, or the default one (every original axial CT series) when there are none."""
        return list(self.rules) or [DEFAULT_RULE]

    def rule_named(self, name: str | None) -> Rule | None:
        return next((r for r in self.active_rules if r.name == name), None)

    def destinations_for(self, rule_name: str | None) -> list[Destination]:
        """Where a series routed by ``rule_name`` goes: the rule's destinations, or all of them."""
        rule = self.rule_named(rule_name)
        if rule is None or not rule.destinations:
            return list(self.destinations)
        return [d for d in self.destinations if d.key in rule.destinations]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; environment variables override it.
        return (env_settings, init_settings)

    @property
    def catalog_url(self) -> str:
        """The SQLAlchemy URL; a SQLite file under data_dir unless set."""
        return self.catalog.url or f"sqlite:///{self.node.data_dir / 'catalog.sqlite'}"

    @property
    def spool_dir(self) -> Path:
        """Where received and derived files live: ``[node] spool_dir``, else the data directory."""
        return self.node.spool_dir or self.node.data_dir

    @property
    def node_id(self) -> str:
        """This node's name in the catalog's claims: stable across restarts (a restarted node takes its own
        interrupted claims back at once) and distinct per data directory (one node per data directory)."""
        return self.node.node_id or f"{socket.gethostname()}:{self.node.data_dir.resolve()}"[:200]


class ConfigError(ValueError):
    """A configuration problem a user can act on: names the key and where it came from."""


def _env_name(loc: tuple[Any, ...]) -> str:
    return ENV_PREFIX + "__".join(str(p).upper() for p in loc if not isinstance(p, int))


def _in_toml(data: dict[str, Any], loc: tuple[Any, ...]) -> bool:
    node: Any = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return False
    return True


def load_settings(path: Path | None) -> Settings:
    """Read the TOML file (if any) and the environment, validate everything, or raise ConfigError."""
    data: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    sections = set(Settings.model_fields)
    for name in env_overrides():
        head = name[len(ENV_PREFIX) :].split("__", 1)[0].lower()
        if head not in sections and name.upper() != CONFIG_ENV:
            raise ConfigError(f"unknown environment variable {name}: expected {ENV_PREFIX}<SECTION>__<KEY>")
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            if not loc:  # a cross-section check: its message starts with the key it is about
                problems.append(f"invalid key {str(err['msg']).removeprefix('Value error, ')} in {where}")
                continue
            key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
            env = _env_name(loc)
            if _in_toml(data, loc) or env.upper() not in {k.upper() for k in os.environ}:
                origin = f"in {where}"
            else:
                origin = f"from environment variable {env}"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key '{key}' {origin}")
            else:
                problems.append(f"invalid key '{key}' {origin}: {err['msg']}")
        raise ConfigError("; ".join(problems)) from exc
    return settings


def describe(settings: Settings) -> str:
    """A one-line summary for the start-up log (no secrets live in the config)."""
    dests = ", ".join(d.key for d in settings.destinations) or "none"
    return (
        f"ae_title={settings.node.ae_title} listen={settings.node.host}:{settings.node.port} "
        f"data_dir={settings.node.data_dir} destinations=[{dests}] quiet_period_s={settings.series.quiet_period_s} "
        f"model={settings.model.path or '<bundled>'} device={settings.model.device} "
        f"tile={settings.model.tile_size}/{settings.model.tile_overlap} batch={settings.model.batch_size} "
        f"catalog={settings.catalog_url}"
    )


def env_overrides() -> list[str]:
    """Names of the environment variables that override the file, for the start-up log."""
    return sorted(k for k in os.environ if k.upper().startswith(ENV_PREFIX))
