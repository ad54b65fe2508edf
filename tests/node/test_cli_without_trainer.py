"""A node-only host (no trainer, no harness installed) gets one line and exit code 2 from the other parts' commands,
saying what to install, not "No such command" or a traceback; a part that is installed but fails to load is logged."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dicom_denoise_node.cli import PART_COMMANDS, app

# Runs the CLI in a fresh interpreter with `entry_points` answering as given (the real ones, filtered by name) and
# the other parts' packages unimportable, as on a host where only dicom-denoise-node is installed; each command line
# goes through typer's runner there, and the (exit code, stdout, stderr) of each come back as JSON.
_HOST = """
import importlib.metadata, json, sys
real = importlib.metadata.entry_points
importlib.metadata.entry_points = lambda **selection: [e for e in real(**selection) if e.name in {keep!r}]
for name in {hidden!r}:
    sys.modules[name] = None
from typer.testing import CliRunner
from dicom_denoise_node.cli import app
results = [CliRunner().invoke(app, args) for args in {command_lines!r}]
print(json.dumps([[r.exit_code, r.stdout, r.stderr] for r in results]))
"""
NOT_INSTALLED = ("denoise_trainer", "denoise_harness", "denoise_demo")
TRAINER_HINT = "pip install dicom-denoise-trainer (from a source tree: pip install -e ./trainer)"
COMMAND_LINES = [
    ["train", "--preset", "tiny", "--catalog", "sqlite:////nonexistent/none.sqlite", "--run-dir", "/nonexistent"],
    ["synth", "--help"],
    ["catalog", "scan", "/nonexistent"],
    ["evaluate", "--model", "x.json"],
    ["model", "export", "--checkpoint", "x.pt"],
    ["demo"],
    ["--help"],
]


def _host(command_lines: list[list[str]], keep: tuple[str, ...] = (), hidden: tuple[str, ...] = ()) -> tuple[str, list]:
    """(what the interpreter logged on stderr, [exit code, stdout, stderr] of each command line)."""
    code = _HOST.format(keep=keep, hidden=hidden, command_lines=command_lines)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return done.stderr, json.loads(done.stdout)


@pytest.fixture(scope="module")
def node_only() -> dict[str, list]:
    logged, results = _host(COMMAND_LINES, hidden=NOT_INSTALLED)
    assert logged == ""  # nothing to load, nothing to warn about
    return {lines[0]: result for lines, result in zip(COMMAND_LINES, results, strict=True)}


@pytest.mark.parametrize("command", [lines[0] for lines in COMMAND_LINES[:-1]])
def test_a_command_of_a_part_not_installed_says_how_to_install_it_in_one_line(
    command: str, node_only: dict[str, list]
) -> None:
    code, stdout, stderr = node_only[command]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and stdout == "", (code, stdout, stderr)
    if command == "demo":
        expected = "denoise-node demo is part of the harness, which is not installed: pip install dicom-denoise-harness"
    else:
        expected = f"denoise-node {command} is part of the trainer, which is not installed: {TRAINER_HINT}"
    assert lines[0].startswith(expected), lines[0]


def test_the_stand_ins_stay_out_of_the_help_and_the_node_commands_remain(node_only: dict[str, list]) -> None:
    code, stdout, _ = node_only["--help"]
    assert code == 0 and "serve" in stdout, stdout
    assert not any(f"│ {name} " in stdout for name in PART_COMMANDS), stdout


def test_with_the_trainer_alone_only_the_demo_is_missing() -> None:
    _, [demo, train] = _host([["demo", "--out", "x"], ["train", "--help"]], keep=("trainer",), hidden=NOT_INSTALLED[1:])
    assert demo[0] == 2 and "the harness, which is not installed" in demo[2], demo
    assert train[0] == 0 and "--preset" in train[1], train


def test_a_part_installed_but_failing_to_load_is_logged_and_named() -> None:
    """The trainer's distribution is there (its entry point is found) but its package does not import."""
    logged, [(code, _, stderr)] = _host([["train"]], keep=("trainer",), hidden=NOT_INSTALLED)
    assert "commands from trainer (denoise_trainer.cli:register) not loaded: ModuleNotFoundError" in logged, logged
    assert code == 2 and stderr.startswith("denoise-node train is part of the trainer, which failed to load ("), stderr
    assert stderr.strip().endswith(TRAINER_HINT), stderr


def test_the_installed_parts_commands_are_the_real_ones() -> None:
    """In this (full) environment no stand-in shadows a real command."""
    hidden = {c.name for c in app.registered_commands if c.hidden}
    assert hidden == set(), hidden
