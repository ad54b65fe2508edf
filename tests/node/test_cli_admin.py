"""Commands an admin can trust (issue 30, item 5, and `status`'s exit codes and JSON): only `serve` and `migrate`
create or migrate a catalog, a CLI older than its catalog refuses naming both revisions, `check --repair` and
`migrate` take the data directory's lock, `retry --failed` and `reprocess --strength` through a running node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, text

from denoise_harness.node import NodeProcess
from dicom_denoise_node.cli.options import DEFAULT_CONFIG
from dicom_denoise_node.store.catalog import SeriesState
from dicom_denoise_node.store.lock import DataDirLock
from dicom_denoise_node.store.migrations import current_revision, head_revision, upgrade_catalog
from tests.peers import StoreSCP, free_port, storescu, wait_until, write_ct_series

FUTURE = "9999_from_a_newer_node"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`denoise-node ARGS` as an admin's shell runs it: no DENOISE_NODE_* variables but those given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DENOISE_NODE_")}
    return subprocess.run(
        [sys.executable, "-m", "dicom_denoise_node", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, "COLUMNS": "200", **(env or {})},
    )


def _config(tmp_path: Path) -> Path:
    """A node's config whose data directory does not exist yet, and whose HTTP port nobody listens on."""
    path = tmp_path / "node.toml"
    path.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n\n[http]\nhost = "127.0.0.1"\nport = {free_port()}\n')
    return path


def _catalog_at(tmp_path: Path, revision: str) -> str:
    """The config's catalog at ``revision``: an older one, or ``FUTURE`` (one only a newer node knows)."""
    (tmp_path / "data").mkdir()
    url = f"sqlite:///{tmp_path / 'data' / 'catalog.sqlite'}"
    engine = create_engine(url)
    upgrade_catalog(engine, "head" if revision == FUTURE else revision)
    if revision == FUTURE:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    engine.dispose()
    return url


def test_without_config_a_command_reads_the_installed_one_if_there_is_one(tmp_path, monkeypatch):
    from dicom_denoise_node.cli import options

    installed = tmp_path / "denoise-node.toml"
    installed.write_text("")
    monkeypatch.setattr(options, "DEFAULT_CONFIG", installed)
    assert options.config_path(None) == installed
    assert options.config_path(tmp_path / "other.toml") == tmp_path / "other.toml"  # -c (or the variable) wins
    installed.unlink()
    assert options.config_path(None) is None  # the defaults, said in the log


# ---- read-only commands on a missing catalog create nothing: one test per command family --------------------


def test_status_without_config_finds_no_catalog_and_creates_nothing(tmp_path):
    """No -c and no /etc/denoise-node/denoise-node.toml: the defaults (here data_dir from the environment), and a
    missing catalog is said, never created (it used to be created and migrated in the default data directory)."""
    if DEFAULT_CONFIG.exists():
        pytest.skip(f"{DEFAULT_CONFIG} is installed on this machine: `status` without -c reads it")
    data = tmp_path / "data"
    env = {"DENOISE_NODE_NODE__DATA_DIR": str(data), "DENOISE_NODE_HTTP__PORT": str(free_port())}
    shown = cli("status", env=env)
    assert shown.returncode == 6, shown.stdout + shown.stderr
    assert f"no catalog at {data / 'catalog.sqlite'}" in shown.stderr and "nothing was created" in shown.stderr
    assert f"no --config given and no {DEFAULT_CONFIG}: the defaults" in shown.stderr
    report = json.loads(cli("status", "--json", env=env).stdout)
    assert report["exit_code"] == 6 and "no catalog at" in report["catalog"]["error"]
    assert report["node"]["reachable"] is False  # the node's health is still reported
    assert not data.exists()


def test_check_on_a_missing_catalog_creates_nothing(tmp_path):
    shown = cli("check", "-c", str(_config(tmp_path)))
    assert shown.returncode == 6 and "no catalog at" in shown.stderr, shown.stdout + shown.stderr
    assert not (tmp_path / "data").exists()


def test_series_commands_on_a_missing_catalog_create_nothing(tmp_path):
    config = str(_config(tmp_path))
    for args in (("retry", "--failed"), ("reprocess", "1.2.3", "--strength", "0.5"), ("purge", "--failed")):
        shown = cli(*args, "-c", config)
        assert shown.returncode == 6 and "no catalog at" in shown.stderr, (args, shown.stdout + shown.stderr)
    assert not (tmp_path / "data").exists()


def test_rules_test_needs_no_catalog_and_creates_nothing(tmp_path):
    files = write_ct_series(tmp_path / "in", 1, rows=16, columns=16)
    shown = cli("rules", "test", str(files[0].parent), "-c", str(_config(tmp_path)))
    assert shown.returncode == 0 and "denoise" in shown.stdout, shown.stdout + shown.stderr
    assert not (tmp_path / "data").exists()


# ---- schema revisions: an older CLI refuses, a newer one does not migrate but says `migrate` ------------------


def test_an_older_cli_refuses_a_newer_catalog_naming_both_revisions(tmp_path):
    config = str(_config(tmp_path))
    url = _catalog_at(tmp_path, FUTURE)
    for args in (("status",), ("retry", "--failed")):  # the reader's path and the other commands'
        shown = cli(*args, "-c", config)
        assert shown.returncode == 6, (args, shown.stdout + shown.stderr)
        assert f"schema revision {FUTURE}, newer than this denoise-node" in shown.stderr
        assert f"its newest is {head_revision()}" in shown.stderr
    served = cli("serve", "-c", config)  # never runs on, nor downgrades, a schema it does not know
    assert served.returncode == 6 and "cannot start: catalog" in served.stderr and FUTURE in served.stderr
    engine = create_engine(url)
    assert current_revision(engine) == FUTURE
    engine.dispose()


def test_a_newer_cli_does_not_migrate_on_a_read_only_command_and_migrate_says_from_and_to(tmp_path):
    config = str(_config(tmp_path))
    url = _catalog_at(tmp_path, "0005")
    for args in (("status",), ("check",)):
        shown = cli(*args, "-c", config)
        assert shown.returncode == 6, (args, shown.stdout + shown.stderr)
        assert "revision 0005, this denoise-node" in shown.stderr and "run `denoise-node migrate`" in shown.stderr
    engine = create_engine(url)
    assert current_revision(engine) == "0005"
    migrated = cli("migrate", "-c", config)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert f"migrated from revision 0005 to {head_revision()}" in migrated.stdout
    assert "alembic" not in migrated.stderr  # Alembic's ~16 INFO lines stay at DEBUG; the node says it in one
    assert current_revision(engine) == head_revision()
    engine.dispose()


# ---- the data directory's lock ------------------------------------------------------------------------------


def test_check_repair_and_migrate_are_refused_while_a_node_holds_the_data_directory(tmp_path):
    config = str(_config(tmp_path))
    _catalog_at(tmp_path, head_revision())
    node = DataDirLock(tmp_path / "data")  # what a running `serve` holds (test_lock.py: the same lock)
    node.acquire()
    try:
        for args in (("check", "--repair"), ("migrate",)):
            shown = cli(*args, "-c", config)
            assert shown.returncode == 4, (args, shown.stdout + shown.stderr)
            assert f"in use by another denoise-node (pid {os.getpid()})" in shown.stderr
    finally:
        node.release()
    repaired = cli("check", "--repair", "-c", config)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr


# ---- through a running node: status's exit codes and JSON, retry --failed, reprocess -------------------------


def _status(node: NodeProcess) -> tuple[int, dict]:
    shown = cli("status", "--json", "-c", str(node.config))
    return shown.returncode, json.loads(shown.stdout)


def test_status_exit_codes_retry_failed_and_reprocess_at_another_strength(tmp_path, tiny_model):
    port = free_port()
    pacs = StoreSCP(tmp_path / "pacs", port=port)  # not started: the PACS is down
    node = NodeProcess(tmp_path, tiny_model, [{"ae_title": "PACS", "port": port}], max_attempts=1).start()
    try:
        files = write_ct_series(tmp_path / "in", 2, rows=32, columns=32)
        uid = str(dcmread(files[0]).SeriesInstanceUID)
        # The SCP listens before the scheduler runs (unhealthy for that moment): healthy first, then asked.
        assert wait_until(lambda: node.http_get("/healthz")[0] == 200, timeout=60), node.http_get("/healthz")
        code, report = _status(node)
        assert code == 0 and report["problems"] == [] and report["node"]["status"] == "ok", report
        assert report["schema"] == 1 and report["series_counts"]["FAILED"] == 0 and report["queue"] == 0
        assert storescu(files, node.port, "DENOISE").returncode == 0
        assert node.wait_state(uid, SeriesState.FAILED, timeout=120), node.log()[-3000:]
        code, report = _status(node)
        assert code == 5 and report["problems"] == ["series: 1 FAILED"], report
        (row,) = report["series"]
        assert row["series_uid"] == uid and row["state"] == "FAILED" and row["last_error"]

        pacs.start()
        retried = cli("retry", "--failed", "-c", str(node.config))
        assert retried.returncode == 0 and f"series {uid} re-queued: state=DERIVED" in retried.stdout
        assert node.wait_state(uid, SeriesState.SENT, timeout=60), node.log()[-3000:]
        first = {str(dcmread(p).SeriesInstanceUID) for p in pacs.wait_for_files(2, timeout=30)}
        assert _status(node)[0] == 0

        again = cli("reprocess", uid, "--strength", "0.5", "-c", str(node.config))
        assert again.returncode == 0 and "(SENT) re-queued at strength 0.5" in again.stdout, again.stderr
        assert node.wait_state(uid, SeriesState.SENT, timeout=60), node.log()[-3000:]
        received = [dcmread(p) for p in pacs.wait_for_files(4, timeout=30)]
        second = {str(ds.SeriesInstanceUID) for ds in received} - first
        assert len(second) == 1  # a new derived series, beside the earlier one
        new = [ds for ds in received if str(ds.SeriesInstanceUID) in second]
        assert len(new) == 2 and all("strength 0.5" in ds.DerivationDescription for ds in new)
    finally:
        node.stop()
        pacs.stop()
    code, report = _status(node)
    assert code == 3 and report["node"]["reachable"] is False and report["series_counts"]["SENT"] == 1
    checked = cli("check", "-c", str(node.config))  # the earlier derived series' files went with their rows
    assert checked.returncode == 0, checked.stdout + checked.stderr
