"""A site's own recognition rules, from a TOML file (`denoise-node catalog scan --rules rules.toml`).

Why a file: a site's names (its series descriptions, its protocol names) and dose levels are its own and stable,
so a physicist writes them down once, next to the archive, instead of repeating flags. Every key is checked: a
misspelt one would otherwise silently leave the built-in rules in charge, so the error names the key and the file.

    [names]                      # case-insensitive regular expressions, in SeriesDescription and ProtocolName
    ld = ['\\bQD\\b', 'SAFIRE 25']   # a string or a list of strings; tried before the built-in names
    hd = '\\bFD\\b'
    builtin = true               # false: only these names count
    [dose]                       # absolute thresholds, for patients with one dose only
    ld_max_ctdivol = 4.0         # mGy;  also hd_min_ctdivol, ld_max_mas, hd_min_mas
    [relative]                   # within one patient and body part
    enabled = true
    ld_max_ratio = 0.6
    hd_min_ratio = 0.85
"""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path
from typing import Any

from denoise_trainer.archive.domain import DomainRules

log = logging.getLogger(__name__)

_NAMES = {"ld": "site_ld", "hd": "site_hd", "ref": "site_ref"}
_DOSE = ("ld_max_mas", "hd_min_mas", "ld_max_ctdivol", "hd_min_ctdivol")
_RELATIVE = {"enabled": "relative", "ld_max_ratio": "ld_max_ratio", "hd_min_ratio": "hd_min_ratio"}
KEYS = {"names": (*_NAMES, "builtin"), "dose": _DOSE, "relative": tuple(_RELATIVE)}


class RulesError(ValueError):
    """A rules file that cannot be used; the message names the file and the key."""


def _pattern(path: Path, key: str, value: Any) -> str:
    """One regular expression from a string or a list of strings (alternatives), compiled once to check it."""
    parts = [value] if isinstance(value, str) else value
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) and p for p in parts):
        raise RulesError(f"{path}: {key} must be a regular expression or a list of them, not {value!r}")
    joined = "|".join(f"(?:{p})" for p in parts)
    try:
        re.compile(joined, re.IGNORECASE)
    except re.error as exc:
        raise RulesError(f"{path}: {key} is not a valid regular expression ({exc})") from exc
    return joined


def _number(path: Path, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise RulesError(f"{path}: {key} must be a positive number, not {value!r}")
    return float(value)


def _flag(path: Path, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise RulesError(f"{path}: {key} must be true or false, not {value!r}")
    return value


def _fields(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """DomainRules keyword arguments from the file's tables, every key checked."""
    fields: dict[str, Any] = {}
    for table, content in data.items():
        if table not in KEYS:
            raise RulesError(f"{path}: unknown key {table!r}; the tables are {', '.join(f'[{t}]' for t in KEYS)}")
        if not isinstance(content, dict):
            raise RulesError(f"{path}: {table} must be a table ([{table}]), not {content!r}")
        for key, value in content.items():
            name = f"{table}.{key}"
            if key not in KEYS[table]:
                raise RulesError(f"{path}: unknown key {name!r}; [{table}] takes {', '.join(KEYS[table])}")
            if table == "names" and key == "builtin":
                if not _flag(path, name, value):
                    fields.update(ld=None, hd=None, ref=None)
            elif table == "names":
                fields[_NAMES[key]] = _pattern(path, name, value)
            elif table == "dose":
                fields[key] = _number(path, name, value)
            elif key == "enabled":
                fields["relative"] = _flag(path, name, value)
            else:
                fields[_RELATIVE[key]] = _number(path, name, value)
    return fields


def load_rules(path: Path, **overrides: Any) -> DomainRules:
    """DomainRules from a TOML file; ``overrides`` (the CLI's flags, None = not given) win over the file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RulesError(f"{path}: cannot read the rules file ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{path}: not valid TOML ({exc})") from exc
    fields = _fields(path, data)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    try:
        rules = DomainRules(**fields)
    except ValueError as exc:
        raise RulesError(f"{path}: {exc}") from exc
    log.info("domain rules from %s: %s", path, sorted(fields))
    return rules
