"""Several nodes on one PostgreSQL catalog and one spool: 2 receivers (one AE title) and 2 workers, real processes.

Six series arrive split across both receivers, instance by instance; one worker is killed (SIGKILL) in the middle
of a series. Every series must still be derived exactly once and every derived SOP Instance must reach the PACS
exactly once: the dead worker's claim runs out (a short lease here) and the other worker finishes it.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from denoise_harness.node import NodeProcess
from dicom_denoise_node.store.catalog import Catalog, DerivedInstance, Series, SeriesState
from tests.peers import LOOPBACK, peer_env, require, wait_until, write_ct_series

pytestmark = pytest.mark.e2e

SERIES, SLICES, LEASE_S = 6, 10, 4


def _node(work: Path, model: Path, role: str, catalog_url: str, spool: Path, pacs_port: int) -> NodeProcess:
    work.mkdir()
    return NodeProcess(
        work,
        model,
        [{"ae_title": "PACS", "port": pacs_port}] if role == "worker" else [],
        node_extra=f'role = "{role}"\nnode_id = "{work.name}"\nspool_dir = "{spool}"',
        series_extra=f"claim_lease_s = {LEASE_S}",
        extra=f'[catalog]\nurl = "{catalog_url}"\n',
        log_level="INFO",
        tile=(128, 16, 4),
    )


def _started(node: NodeProcess) -> bool:
    if not node.alive():
        raise RuntimeError(f"node exited: {node.log_tail(30)}")
    return "node started" in node.log()


def test_two_receivers_and_two_workers_share_one_postgresql_catalog(
    tmp_path, postgres_url, tiny_model, storescp_factory
):
    pacs = storescp_factory("PACS")
    spool = tmp_path / "spool"
    receivers = [
        _node(tmp_path / f"receiver-{i}", tiny_model, "receive", postgres_url, spool, pacs.port) for i in (1, 2)
    ]
    workers = [_node(tmp_path / f"worker-{i}", tiny_model, "worker", postgres_url, spool, pacs.port) for i in (1, 2)]
    catalog = Catalog(postgres_url)
    try:
        for node in receivers:
            node.start()
        for node in workers:
            node.start(wait=False)
        for node in workers:
            assert wait_until(lambda node=node: _started(node), timeout=120), node.log_tail(30)
        assert all(":11112" not in n.log() for n in workers)  # workers do not listen

        # Six series, each split instance by instance across the two receivers (one AE title, two ports).
        sent: dict[str, int] = {}
        procs = []
        for s in range(SERIES):
            files = write_ct_series(tmp_path / f"series-{s}", SLICES, rows=256, columns=256)
            sent[str(dcmread(files[0]).SeriesInstanceUID)] = len(files)
            for r, receiver in enumerate(receivers):
                half = [str(f) for f in files[r::2]]
                cmd = [require("storescu"), "-aet", f"CT{s}", "-aec", "DENOISE", LOOPBACK, str(receiver.port), *half]
                procs.append(subprocess.Popen(cmd, env=peer_env(), stderr=subprocess.PIPE, text=True))
        for proc in procs:
            assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""

        # Kill worker-1 while it is in the middle of a series (at least one slice done, not all).
        def mid_series() -> Series | None:
            with catalog.db.session() as s:
                return s.scalars(
                    select(Series).where(
                        Series.state == SeriesState.PROCESSING,
                        Series.claimed_by.startswith("worker-1#"),
                        Series.slices_done >= 1,
                        Series.slices_done < Series.slices_total,
                    )
                ).first()

        assert wait_until(mid_series, timeout=240, interval=0.05), workers[0].log_tail(30)
        victim = mid_series()
        workers[0].kill9()

        for uid in sent:
            assert wait_until(lambda uid=uid: catalog.views.series_state(uid) is SeriesState.SENT, timeout=300), (
                uid,
                catalog.views.series_state(uid),
                workers[1].log_tail(30),
            )
        status = subprocess.run(
            [sys.executable, "-m", "dicom_denoise_node", "status", "-c", str(receivers[0].config)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert "SENT" in status.stdout

        with catalog.db.session() as s:
            rows = {r.series_uid: r for r in s.scalars(select(Series).where(Series.series_uid.in_(list(sent))))}
            derived = Counter(s.scalars(select(DerivedInstance.series_fk)))
        # The killed series: taken over after the lease, by the other worker.
        assert victim is not None and rows[victim.series_uid].attempts == 0  # finished: counter reset
        assert "claim of worker-1#" in workers[1].log() and "taking it over" in workers[1].log()
        # Each series derived once, with one derived instance per slice.
        assert {derived[r.id] for r in rows.values()} == {SLICES}
        assert len({r.derived_series_uid for r in rows.values()}) == SERIES
        # Each derived SOP Instance reached the PACS exactly once (the PACS's ledger has one line per C-STORE).
        received = pacs.wait_for_files(SERIES * SLICES, timeout=60)
        uids = Counter(str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in received)
        assert len(uids) == SERIES * SLICES and set(uids.values()) == {1}, uids.most_common(3)
        # Both workers did work (each receiver took its half: storescu's exit codes above).
        assert "state=DERIVED" in workers[1].log() and "state=PROCESSING" in workers[0].log()
    finally:
        catalog.close()
        for node in [*receivers, *workers]:
            node.stop()
