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
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
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
    allowed_calling_aets: list[AETitle] = Field(default_factory=list)
    allowed_peers: dict[str, list[str]] = Field(default_factory=dict)
    max_pdu: int = Field(0, ge=0, description="0 = unlimited")
    max_associations: int = Field(16, ge=1)
    max_dataset_mb: float = Field(1024.0, gt=0)
    min_free_mb: float = Field(1024.0, ge=0)
    max_pending_series: int = Field(0, ge=0, description="0 = unlimited")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    tls: TLSSettings = Field(default_factory=lambda: TLSSettings())

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae(v)))

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


class Destination(_Section):
    """A PACS (or any C-STORE SCP) that receives every derived series."""

    ae_title: AETitle
    host: str
    port: int = Field(ge=1, le=65535)
    name: str = ""

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae(v)))

    @property
    def key(self) -> str:
        """Stable identity used in the catalog's delivery records."""
        return self.name or f"{self.ae_title}@{self.host}:{self.port}"


class SeriesSettings(_Section):
    quiet_period_s: float = Field(10.0, gt=0)
    poll_interval_s: float = Field(1.0, gt=0)


class ModelSettings(_Section):
    path: str = ""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tile_size: int = Field(272, ge=32)
    tile_overlap: int = Field(32, ge=0)
    batch_size: int = Field(4, ge=1)
    half_precision: bool = True

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


class SendSettings(_Section):
    max_attempts: int = Field(5, ge=1)
    backoff_s: float = Field(30.0, gt=0)
    backoff_max_s: float = Field(3600.0, gt=0)
    timeout_s: float = Field(60.0, gt=0)


class CatalogSettings(_Section):
    url: str = ""


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
    send: SendSettings = Field(default_factory=SendSettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

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
