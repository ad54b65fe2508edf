"""Receive benchmark: images/s into the node's SCP from dcmtk storescu, against dcmtk's storescp on the same files
in the same run. Both peers get TCP_NODELAY=1 (dcmtk waits for Nagle's algorithm otherwise).

The node makes every instance durable before Success (fsync of file and directory, SQLite commit with
synchronous=FULL); storescp writes without fsync. The ratio is what durability costs on this disk.

    python -m bench.receive --files 200 --size 512
    python -m bench.receive --files 200 --size 512 --senders 4   # four scanners at once (storescp with --fork)

With several senders the files are dealt round-robin into one folder per sender, every storescu starts at
once, and the time runs from the first start to the last exit; storescp then forks a child per association.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

import denoise_harness as peers
from bench.common import machine
from bench.node import random_model, running_node


def send_all(jobs: list[tuple[Path, int]], called: str) -> float:
    """Seconds for one storescu per (folder, port), all started together, until the last one exits."""
    with ThreadPoolExecutor(len(jobs)) as pool:
        start = time.perf_counter()
        results = list(pool.map(lambda j: peers.storescu([j[0]], j[1], called, "BENCH", timeout=600), jobs))
        elapsed = time.perf_counter() - start
    for result in results:
        if result.returncode != 0:
            raise RuntimeError(f"storescu failed: {result.stderr[-500:]}")
    return elapsed


def deal(source: Path, senders: int) -> list[Path]:
    """Hard-link the files round-robin into one folder per sender (the one folder itself for one sender)."""
    if senders == 1:
        return [source]
    folders = [source.parent / f"sender{i}" for i in range(senders)]
    for folder in folders:
        folder.mkdir()
    for i, path in enumerate(sorted(source.iterdir())):
        os.link(path, folders[i % senders] / path.name)
    return folders


def run(files: int, size: int, repeat: int, senders: int = 1) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-receive-") as tmp:
        work = Path(tmp)
        data = work / "series"
        peers.write_ct_series(data, files, rows=size, columns=size)
        megabytes = sum(p.stat().st_size for p in data.iterdir()) / 1e6
        folders = deal(data, senders)
        fork = ["--fork"] if senders > 1 else []
        times: dict[str, list[float]] = {"storescp": [], "node": []}
        for i in range(repeat):
            with peers.StoreSCP(work / f"storescp{i}", extra_args=fork) as scp:
                times["storescp"].append(send_all([(f, scp.port) for f in folders], scp.ae_title))
            model = random_model(work / "model", filters=8, blocks=1)
            # A long quiet period: the worker stays idle, only the receive path is measured.
            with running_node(work / f"node{i}", model, pacs_port=1) as node:
                times["node"].append(send_all([(f, node.port) for f in folders], "DENOISE"))
    best = {k: min(v) for k, v in times.items()}
    return {
        "files": files,
        "size": size,
        "senders": senders,
        "megabytes": round(megabytes, 1),
        "seconds": best,
        "images_per_s": {k: files / v for k, v in best.items()},
        "ratio_node_to_storescp": best["storescp"] / best["node"],
        "machine": machine(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--senders", type=int, default=1, help="concurrent storescu processes (scanners)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    result = run(args.files, args.size, args.repeat, args.senders)
    title = (
        f"receive: {args.files} CT files of {args.size}² ({result['megabytes']} MB) from {args.senders} "
        f"sender(s), best of {args.repeat}"
    )
    table = Table(title=title)
    for col in ("receiver", "seconds", "images/s", "MB/s"):
        table.add_column(col, justify="right" if col != "receiver" else "left")
    for name, label in (("storescp", "dcmtk storescp (no fsync)"), ("node", "denoise-node SCP (durable)")):
        seconds = result["seconds"][name]  # type: ignore[index]
        table.add_row(label, f"{seconds:.2f}", f"{args.files / seconds:.1f}", f"{result['megabytes'] / seconds:.1f}")
    console = Console()
    console.print(table)
    console.print(f"node / storescp throughput: {result['ratio_node_to_storescp']:.2f} (target ≥ 0.5)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
