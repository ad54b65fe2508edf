"""Log lines as a service's readers want them: journald priorities under systemd, JSON lines when asked.

Under systemd, stderr goes to the journal and every line would arrive at the unit's default priority (info), so
``journalctl -p warning`` would show nothing. systemd reads a ``<N>`` prefix (sd-daemon(3), ``SyslogLevelPrefix=``)
as the line's syslog priority; the node writes one when its stderr *is* the journal stream (``$JOURNAL_STREAM``
names the device and inode of that stream, and they must match stderr's: a node started from a shell under a
systemd user session inherits the variable with a different stderr). The journal keeps its own timestamp, so the
prefixed text format leaves the time out. ``[node] log_format = "json"`` writes one JSON object per line
(python-json-logger) for log shippers, with the same prefix under the journal.

Libraries that narrate every object at INFO (highdicom: "copy attributes of module …", several lines per derived
instance and report; Alembic: "Context impl SQLiteImpl", "Running upgrade …", about 16 lines whenever a catalog is
opened or migrated, which store/migrations says in one line) are kept out of an INFO log: their INFO shows only
when the node logs at DEBUG.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal, TextIO

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]

# Loggers whose INFO records are per-instance chatter, not events an admin acts on.
CHATTY_LIBRARIES = ("highdicom", "alembic")

# logging level → syslog priority (sd-daemon(3)): 7 debug, 6 info, 4 warning, 3 err, 2 crit
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def quiet_chatty_libraries(level: str) -> None:
    """Let the chatty libraries' INFO through only when the node logs at ``level`` DEBUG; their warnings always."""
    threshold = logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(threshold)


def syslog_priority(levelno: int) -> int:
    return next((prio for level, prio in _PRIORITIES if levelno >= level), 7)


def writes_to_journal(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """True when ``stream`` is the journal stream systemd connected (``$JOURNAL_STREAM`` = "device:inode")."""
    value = (environ if environ is not None else os.environ).get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        stat = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


class JournalPriorityFormatter(logging.Formatter):
    """Wraps a formatter and puts ``<priority>`` before every line of its output (tracebacks included)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


def json_formatter() -> logging.Formatter:
    """One JSON object per record: time (ISO 8601, UTC), level, logger, message, and exc_info when there is one."""
    formatter = JsonFormatter(
        "{asctime}{levelname}{name}{message}",
        style="{",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )
    formatter.converter = __import__("time").gmtime
    return formatter


def service_formatter(log_format: LogFormat, stream: TextIO = sys.stderr) -> logging.Formatter:
    """The formatter for a non-interactive stream: text or JSON, with journald priorities when it is the journal."""
    journal = writes_to_journal(stream)
    if log_format == "json":
        inner = json_formatter()
    elif journal:
        inner = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    else:
        inner = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    return JournalPriorityFormatter(inner) if journal else inner
