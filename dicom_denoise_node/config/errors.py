"""The one error a bad configuration raises: its message names the key and the file (or the variable)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem a user can act on: names the key and where it came from."""
