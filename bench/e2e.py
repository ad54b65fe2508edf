"""End-to-end benchmark: one series through the real node to a dcmtk PACS, from the last C-STORE to the last
derived instance stored by the PACS, split into quiet period, decode, inference, the wait for the derive thread,
the quality report and send.

The split comes from the node's own log (denoise/series.py and denoise/worker.py time each stage); "other" is everything
else: scheduler polling, catalog transactions. The guard and encode+write run on a worker thread beside
inference (denoise/series.py); their own durations are shown but are not part of the sum.

The headline figure is the overhead outside inference and the quiet period, as a fraction of inference, with
inference measured **alone** in the same run (the same model, tiler settings and compile setting, in this
process, once before the node starts and once after it has stopped, averaged: this shared machine's speed
drifts by several per cent over a few minutes, and one side alone mistook that drift for overhead or hid it).
Work overlapped with inference that slows it down counts as overhead.

    python -m bench.e2e --slices 64 --size 512 --filters 32 [--compile]
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

import denoise_harness as peers
from bench.common import machine
from bench.node import random_model, running_node
from dicom_denoise_node.config import ModelSettings
from dicom_denoise_node.denoise.decode import file_hu
from dicom_denoise_node.denoise.inference import TiledInferer
from dicom_denoise_node.model.registry import load_model

STAGES = re.compile(
    r"decode ([\d.]+) s, inference ([\d.]+) s, guard ([\d.]+) s, encode\+write ([\d.]+) s \(both beside inference\), "
    r"waited ([\d.]+) s, report ([\d.]+) s"
)
SENT = re.compile(r"instances sent to \S+ in ([\d.]+) s")


def inference_alone(model: Path, series: Path, compile: bool) -> float:
    """Seconds for the node's tiler (default tile, overlap and batch) over the series' slices, nothing else."""
    settings = ModelSettings(compile=compile)
    network, info = load_model(model, "cpu")
    inferer = TiledInferer(
        network, settings.tile_size, settings.tile_overlap, settings.batch_size, "cpu", compile=settings.compile
    )
    slices = []
    for path in sorted(series.iterdir()):
        slices.append(info.normalize(file_hu(path)))
    inferer.run_all(slices[:1])  # warm-up
    start = time.perf_counter()
    inferer.run_all(slices)
    return time.perf_counter() - start


def run(slices: int, size: int, filters: int, quiet_period_s: float, compile: bool = False) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        work = Path(tmp)
        data = work / "series"
        peers.write_ct_series(data, slices, rows=size, columns=size)
        model = random_model(work / "model", filters=filters)
        alone_before = inference_alone(model, data, compile)  # nothing else runs yet
        with (
            peers.StoreSCP(work / "pacs") as pacs,
            running_node(work / "node", model, pacs.port, quiet_period_s=quiet_period_s, compile=compile) as node,
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
        alone_after = inference_alone(model, data, compile)  # the node has stopped: nothing else runs
    alone = (alone_before + alone_after) / 2
    stages = STAGES.search(log)
    sent = SENT.search(log)
    if stages is None or sent is None:
        raise RuntimeError("the node's log has no stage timings")
    decode, inference, guard, encode, waited, report = (float(x) for x in stages.groups())
    send = float(sent.group(1))
    other = total - quiet_period_s - decode - inference - waited - report - send
    overhead = total - quiet_period_s - alone
    return {
        "slices": slices,
        "size": size,
        "filters": filters,
        "compile": compile,
        "seconds": {
            "total": total,
            "quiet_period": quiet_period_s,
            "decode": decode,
            "inference": inference,
            "waited_for_derive_thread": waited,
            "quality_report": report,
            "send": send,
            "other": other,
        },
        "beside_inference": {"guard": guard, "encode_write": encode},
        "inference_alone": alone,
        "inference_alone_before_after": [alone_before, alone_after],
        "overhead_fraction_of_inference": overhead / alone if alone else float("nan"),
        "overhead_fraction_of_node_inference": (total - quiet_period_s - inference) / inference,
        "machine": machine(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--filters", type=int, default=32)
    ap.add_argument("--quiet-period", type=float, default=2.0)
    ap.add_argument("--compile", action="store_true", help="the node with [model] compile = true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    result = run(args.slices, args.size, args.filters, args.quiet_period, args.compile)
    seconds = result["seconds"]
    table = Table(title=f"end to end: {args.slices} slices of {args.size}², generator {args.filters} filters (CPU)")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("per slice", justify="right")
    for name, value in seconds.items():  # type: ignore[union-attr]
        table.add_row(name.replace("_", " "), f"{value:.2f}", f"{value / args.slices:.3f}")
    for name, value in result["beside_inference"].items():  # type: ignore[union-attr]
        table.add_row(f"({name.replace('_', ' ')}, beside inference)", f"{value:.2f}", f"{value / args.slices:.3f}")
    alone = float(result["inference_alone"])  # type: ignore[arg-type]
    before, after = result["inference_alone_before_after"]  # type: ignore[misc]
    label = f"inference alone (same run: {before:.1f} before, {after:.1f} after)"
    table.add_row(label, f"{alone:.2f}", f"{alone / args.slices:.3f}")
    console = Console(width=120)
    console.print(table)
    frac = result["overhead_fraction_of_inference"]
    node_frac = result["overhead_fraction_of_node_inference"]
    console.print(
        f"overhead outside inference and the quiet period: {frac:.1%} of inference alone "
        f"({node_frac:.1%} of the node's own inference time; target < 10 %)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
