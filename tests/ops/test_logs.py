"""Log lines for a service: journald priorities when stderr is the journal stream, JSON lines on request
(ops/logs.py)."""

from __future__ import annotations

import json
import logging
import os

import pytest
from pydantic import ValidationError

from denoise_harness.node import NodeProcess
from dicom_denoise_node.config import NodeSettings
from dicom_denoise_node.ops.logs import (
    JournalPriorityFormatter,
    json_formatter,
    syslog_priority,
    writes_to_journal,
)


def _record(level: int, message: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("dicom_denoise_node.x", level, __file__, 1, message, (), exc_info)


def test_levels_map_to_syslog_priorities_and_every_line_of_a_traceback_carries_one():
    assert [syslog_priority(lv) for lv in (10, 20, 30, 40, 50)] == [7, 6, 4, 3, 2]
    try:
        raise ValueError("boom")
    except ValueError as exc:
        text = JournalPriorityFormatter(logging.Formatter("%(message)s")).format(_record(logging.ERROR, "failed", exc))
    lines = text.split("\n")
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines), lines


def test_the_journal_is_recognised_by_device_and_inode_not_by_the_variable_alone(tmp_path):
    with (tmp_path / "journal").open("w") as stream, (tmp_path / "other").open("w") as other:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert writes_to_journal(stream, env)
        assert not writes_to_journal(other, env)  # inherited variable, another stderr
        assert not writes_to_journal(stream, {})
        assert not writes_to_journal(stream, {"JOURNAL_STREAM": "garbage"})


def test_json_lines_carry_time_level_logger_message_and_the_traceback():
    try:
        raise RuntimeError("decoder")
    except RuntimeError as exc:
        line = json_formatter().format(_record(logging.WARNING, "series failed", exc))
    data = json.loads(line)
    assert data["level"] == "WARNING" and data["logger"] == "dicom_denoise_node.x"
    assert data["message"] == "series failed" and "RuntimeError: decoder" in data["exc_info"]
    assert data["time"].endswith("+0000") and "T" in data["time"]
    assert "\n" not in line


def test_the_node_under_a_journal_stream_prefixes_each_line_with_its_priority(tmp_path, tiny_model, monkeypatch):
    """The real `denoise-node serve` with its stderr on a file that JOURNAL_STREAM names, as systemd sets it up:
    INFO lines start with <6>, warnings with <4>, and no line carries a second timestamp."""
    node = NodeProcess(tmp_path, tiny_model, [], log_level="INFO")  # no destinations: a startup warning
    node.log_path.touch()
    st = os.stat(node.log_path)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    node.start()
    node.stop()
    lines = [line for line in node.log().splitlines() if line.strip()]
    assert lines and all(line[:3] in ("<7>", "<6>", "<4>", "<3>", "<2>") for line in lines), lines[:5]
    assert any(line.startswith("<4>WARNING") and "no [[destinations]]" in line for line in lines)
    assert any(line.startswith("<6>INFO") and "node started" in line for line in lines)
    assert not any(line[3:7].isdigit() for line in lines)  # the journal keeps the time


def test_log_format_is_checked_in_the_config():
    assert NodeSettings(log_format="json").log_format == "json"
    with pytest.raises(ValidationError, match="log_format"):
        NodeSettings(log_format="xml")


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_highdicom_per_instance_info_reaches_the_log_only_at_debug(level, caplog):
    """The node's logging set-up, then a quality report built the way the worker builds one (highdicom logs "copy
    attributes of module …" at INFO for each module of each instance): at INFO none of it reaches the root handler;
    at DEBUG it does (so the INFO case is not passing for want of records)."""
    from dicom_denoise_node.cli.options import setup_logging
    from dicom_denoise_node.denoise.quality_report import warm_up

    root = logging.getLogger()
    saved = (root.level, list(root.handlers), logging.getLogger("highdicom").level)
    try:
        setup_logging(level)
        root.addHandler(caplog.handler)  # setup_logging replaced the root's handlers
        warm_up()
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        logging.getLogger("highdicom").setLevel(saved[2])
    chatter = [r for r in caplog.records if r.name.startswith("highdicom") and r.levelno == logging.INFO]
    if level == "INFO":
        assert chatter == [], [r.getMessage() for r in chatter[:3]]
    else:
        assert any("copy attributes of module" in r.getMessage() for r in chatter)
