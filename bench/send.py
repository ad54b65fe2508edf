"""Send benchmark: instances/s from the node's C-STORE SCU (`send.send_files`, as the pipeline sends a derived
series) to dcmtk storescp, against dcmtk's own storescu sending the same files to the same storescp, in the same
run, best of ``--repeat``. storescp and storescu get ``TCP_NODELAY=1``; the node sets it on its own sockets.

    python -m bench.send --files 64 --size 512
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import denoise_harness as peers
from bench.common import machine
from dicom_denoise_node.config import Destination
from dicom_denoise_node.send.scu import send_files


def run(files: int, size: int, repeat: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-send-") as tmp:
        work = Path(tmp)
        paths = sorted(peers.write_ct_series(work / "series", files, rows=size, columns=size))
        times: dict[str, list[float]] = {"storescu": [], "node": []}
        with peers.StoreSCP(work / "pacs") as pacs:
            dest = Destination(name="bench", ae_title=pacs.ae_title, host=peers.LOOPBACK, port=pacs.port)
            for _ in range(repeat):
                start = time.perf_counter()
                result = peers.storescu([work / "series"], pacs.port, pacs.ae_title, "BENCH", timeout=600)
                times["storescu"].append(time.perf_counter() - start)
                if result.returncode != 0:
                    raise RuntimeError(f"storescu failed: {result.stderr[-500:]}")
                start = time.perf_counter()
                sent = send_files(paths, dest, "DENOISE")
                times["node"].append(time.perf_counter() - start)
                if sent != files:
                    raise RuntimeError(f"the node sent {sent} of {files}")
    best = {k: min(v) for k, v in times.items()}
    return {
        "files": files,
        "size": size,
        "seconds": best,
        "instances_per_s": {k: files / v for k, v in best.items()},
        "ratio_node_to_storescu": best["storescu"] / best["node"],
        "machine": machine(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=64)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    result = run(args.files, args.size, args.repeat)
    table = Table(title=f"send: {args.files} CT files of {args.size}² to dcmtk storescp, best of {args.repeat}")
    for col in ("sender", "seconds", "instances/s", "ms/instance"):
        table.add_column(col, justify="right" if col != "sender" else "left")
    for name, label in (("storescu", "dcmtk storescu"), ("node", "denoise-node SCU (send_files)")):
        seconds = result["seconds"][name]  # type: ignore[index]
        table.add_row(label, f"{seconds:.2f}", f"{args.files / seconds:.1f}", f"{seconds / args.files * 1000:.1f}")
    console = Console()
    console.print(table)
    console.print(f"node / storescu throughput: {result['ratio_node_to_storescu']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
