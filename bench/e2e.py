"""End-to-end benchmark: one series through the real node to a dcmtk PACS, from the last C-STORE to the last
derived instance stored by the PACS, split into quiet period, decode, inference, guard, encode+write (images and
the quality report) and send.

The split comes from the node's own log (process.py and pipeline.py time each stage); "other" is everything
else: scheduler polling, catalog transactions, process start-up of nothing (the node is already up). The figure
to shrink is the overhead outside inference and the quiet period, as a fraction of inference.

    python -m bench.e2e --slices 64 --size 512 --filters 32
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.common import machine
from bench.node import random_model, running_node
from demo import peers

STAGES = re.compile(r"decode ([\d.]+) s, inference ([\d.]+) s, guard ([\d.]+) s, encode\+write ([\d.]+) s")
SENT = re.compile(r"instances sent to \S+ in ([\d.]+) s")


def run(slices: int, size: int, filters: int, quiet_period_s: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        work = Path(tmp)
        data = work / "series"
        peers.write_ct_series(data, slices, rows=size, columns=size)
        model = random_model(work / "model", filters=filters)
        with (
            peers.StoreSCP(work / "pacs") as pacs,
            running_node(work / "node", model, pacs.port, quiet_period_s=quiet_period_s) as node,
        ):
            result = peers.storescu([data], node.port, "DENOISE", "BENCH", timeout=600)
            last_store = time.perf_counter()
            if result.returncode != 0:
                raise RuntimeError(f"storescu failed: {result.stderr[-500:]}")
            pacs.wait_for_files(slices + 1, timeout=3600)  # the derived images and the quality report
            total = time.perf_counter() - last_store
            # The node logs the send after the PACS acknowledged the last instance.
            peers.wait_until(lambda: SENT.search(node.log_path.read_text()) is not None, timeout=30)
            log = node.log_path.read_text()
    stages = STAGES.search(log)
    sent = SENT.search(log)
    if stages is None or sent is None:
        raise RuntimeError("the node's log has no stage timings")
    decode, inference, guard, encode = (float(x) for x in stages.groups())
    send = float(sent.group(1))
    other = total - quiet_period_s - decode - inference - guard - encode - send
    overhead = total - quiet_period_s - inference
    return {
        "slices": slices,
        "size": size,
        "filters": filters,
        "seconds": {
            "total": total,
            "quiet_period": quiet_period_s,
            "decode": decode,
            "inference": inference,
            "guard": guard,
            "encode_write": encode,
            "send": send,
            "other": other,
        },
        "overhead_fraction_of_inference": overhead / inference if inference else float("nan"),
        "machine": machine(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--filters", type=int, default=32)
    ap.add_argument("--quiet-period", type=float, default=2.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    result = run(args.slices, args.size, args.filters, args.quiet_period)
    seconds = result["seconds"]
    table = Table(title=f"end to end: {args.slices} slices of {args.size}², generator {args.filters} filters (CPU)")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("per slice", justify="right")
    for name, value in seconds.items():  # type: ignore[union-attr]
        table.add_row(name.replace("_", " "), f"{value:.2f}", f"{value / args.slices:.3f}")
    console = Console()
    console.print(table)
    frac = result["overhead_fraction_of_inference"]
    console.print(f"overhead outside inference and the quiet period: {frac:.1%} of inference (target < 10 %)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
