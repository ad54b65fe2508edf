"""Receive scaling: aggregate images/s into N receiver nodes (``--role receive``) that share one PostgreSQL catalog
and one spool, against N = 1, and against dcmtk's storescp (``--fork``) fed by the same senders, in the same run.

Every receiver makes each instance durable before Success (file fsync, rename, folder fsync, a PostgreSQL commit);
storescp writes without fsync. Senders (dcmtk storescu, TCP_NODELAY=1) are dealt round-robin to the receivers,
``--senders-per-receiver`` each; the time runs from the first start to the last exit. On one machine the receivers
share its cores and its disk, so this measures what one host gains from more receiver processes, not what more
hosts would.

    python -m bench.receivers --files 240 --size 512 --receivers 1 2 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

import denoise_harness as peers
from bench.common import machine
from bench.node import random_model
from bench.receive import deal, send_all
from denoise_harness.node import NodeProcess


def _receivers(work: Path, count: int, catalog_url: str, model: Path) -> list[NodeProcess]:
    spool = work / "spool"
    nodes = []
    for i in range(count):
        node_work = work / f"receiver{i}"
        node_work.mkdir(parents=True)
        nodes.append(
            NodeProcess(
                node_work,
                model,
                [],
                node_extra=f'role = "receive"\nspool_dir = "{spool}"',
                extra=f'[catalog]\nurl = "{catalog_url}"\n',
                quiet_period_s=3600.0,  # nothing completes: only the receive path is measured
                log_level="WARNING",
            )
        )
    for node in nodes:
        node.start(timeout=180.0)
    return nodes


def run(files: int, size: int, receivers: list[int], senders_per_receiver: int) -> dict[str, object]:
    results: dict[str, object] = {"files": files, "size": size, "senders_per_receiver": senders_per_receiver}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-receivers-") as tmp:
        work = Path(tmp)
        data = work / "series"
        peers.write_ct_series(data, files, rows=size, columns=size)
        results["megabytes"] = round(sum(p.stat().st_size for p in data.iterdir()) / 1e6, 1)
        model = random_model(work / "model", filters=8, blocks=1)
        server = peers.PostgresServer().start()
        try:
            for n in receivers:
                folders = deal(data, n * senders_per_receiver)
                with peers.StoreSCP(work / f"storescp{n}", extra_args=["--fork"]) as scp:
                    baseline = send_all([(f, scp.port) for f in folders], scp.ae_title)
                nodes = _receivers(work / f"nodes{n}", n, server.create_database(f"bench{n}"), model)
                try:
                    seconds = send_all([(f, nodes[i % n].port) for i, f in enumerate(folders)], "DENOISE")
                finally:
                    for node in nodes:
                        node.stop()
                rows.append({"receivers": n, "senders": len(folders), "seconds": seconds, "storescp_seconds": baseline,
                             "images_per_s": files / seconds, "ratio_to_storescp": baseline / seconds})  # fmt: skip
                for folder in folders:
                    if folder != data:  # deal hands out the source itself to a single sender
                        for path in folder.iterdir():
                            path.unlink()
                        folder.rmdir()
        finally:
            server.stop()
    one = next((r["images_per_s"] for r in rows if r["receivers"] == 1), None)
    for r in rows:
        r["scaling_vs_one"] = r["images_per_s"] / one if one else None
    results["rows"] = rows
    results["machine"] = machine()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=240)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--receivers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--senders-per-receiver", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    result = run(args.files, args.size, args.receivers, args.senders_per_receiver)
    table = Table(
        title=f"receive scaling: {args.files} CT files of {args.size}² ({result['megabytes']} MB), one PostgreSQL "
        f"catalog, {args.senders_per_receiver} storescu per receiver"
    )
    for col in ("receivers", "senders", "seconds", "images/s", "× one receiver", "storescp --fork s", "÷ storescp"):
        table.add_column(col, justify="right")
    for r in result["rows"]:  # type: ignore[attr-defined]
        table.add_row(str(r["receivers"]), str(r["senders"]), f"{r['seconds']:.2f}", f"{r['images_per_s']:.1f}",
                      f"{r['scaling_vs_one']:.2f}" if r["scaling_vs_one"] else "—", f"{r['storescp_seconds']:.2f}",
                      f"{r['ratio_to_storescp']:.2f}")  # fmt: skip
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
