"""Typed settings for the node, read once at start from one TOML file plus environment overrides.

Why one place: every stage gets its settings passed down from here, so a typo in the file is found at start
(with the key and the file named) instead of hours later in a worker thread.

Precedence (highest first): environment variables ``DENOISE_NODE_<SECTION>__<KEY>``, the TOML file, defaults.
"""

from __future__ import annotations

import logging
import os
import socket
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from dicom_denoise_node.config.destinations import Destination
from dicom_denoise_node.config.errors import ConfigError
from dicom_denoise_node.config.sections import (
    DEFAULT_RULE,
    FORWARD_ONLY_SOP_CLASSES,
    AETitle,
    CatalogSettings,
    DeriveSettings,
    GuardSettings,
    HttpSettings,
    ModelSettings,
    NodeSettings,
    NotifySettings,
    ReportSettings,
    RetentionSettings,
    Rule,
    SendSettings,
    SeriesSettings,
    TLSSettings,
    check_ae,
)

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_RULE",
    "FORWARD_ONLY_SOP_CLASSES",
    "ENV_PREFIX",
    "AETitle",
    "CatalogSettings",
    "ConfigError",
    "DeriveSettings",
    "Destination",
    "GuardSettings",
    "HttpSettings",
    "ModelSettings",
    "NodeSettings",
    "NotifySettings",
    "ReportSettings",
    "RetentionSettings",
    "Rule",
    "SendSettings",
    "SeriesSettings",
    "Settings",
    "TLSSettings",
    "check_ae",
    "describe",
    "env_overrides",
    "load_settings",
    "redact_url",
]

log = logging.getLogger(__name__)

ENV_PREFIX = "DENOISE_NODE_"
CONFIG_ENV = "DENOISE_NODE_CONFIG"  # the config file path, read by the CLI


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
    notify: NotifySettings = Field(default_factory=NotifySettings)

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
            unknown = [d for d in rule.forward_originals if d not in names]
            if unknown:
                raise ValueError(
                    f"rules[{i}].forward_originals: {', '.join(unknown)} not among the [[destinations]] "
                    f'({", ".join(sorted(names)) or "none configured"}); name a destination with name = "…"'
                )
            if rule.strength is not None and self.model.target_noise_hu:
                raise ValueError(
                    f"rules[{i}].strength: rule {rule.name!r} sets strength={rule.strength:g} and [model] "
                    f"target_noise_hu={self.model.target_noise_hu:g} sets the blend too: set one of them"
                )
        return self

    @property
    def forward_only_sop_classes(self) -> tuple[str, ...]:
        """What the SCP accepts only to pass it on (the dose reports): when some rule forwards originals."""
        return FORWARD_ONLY_SOP_CLASSES if any(r.forward_originals for r in self.active_rules) else ()

    @property
    def active_rules(self) -> list[Rule]:
        """The configured rules, or the default one (every original axial CT series) when there are none."""
        return list(self.rules) or [DEFAULT_RULE]

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
    def catalog_url_shown(self) -> str:
        """The catalog URL for logs and screens: a PostgreSQL password replaced by ***."""
        return redact_url(self.catalog_url)

    @property
    def spool_dir(self) -> Path:
        """Where received and derived files live: ``[node] spool_dir``, else the data directory."""
        return self.node.spool_dir or self.node.data_dir

    @property
    def node_id(self) -> str:
        """This node's name in the catalog's claims: stable across restarts (a restarted node takes its own
        interrupted claims back at once) and distinct per data directory (one node per data directory)."""
        return self.node.node_id or f"{socket.gethostname()}:{self.node.data_dir.resolve()}"[:200]


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
        f"catalog={settings.catalog_url_shown} role={settings.node.role}"
    )


def redact_url(url: str) -> str:
    """A database URL without its password (``postgresql+psycopg://denoise:***@db/denoise``): for logs, `status` and
    the training metadata that goes into exported model files."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def env_overrides() -> list[str]:
    """Names of the environment variables that override the file, for the start-up log."""
    return sorted(k for k in os.environ if k.upper().startswith(ENV_PREFIX))
