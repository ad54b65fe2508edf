"""`denoise-node demo` (what `make demo` runs): progress bars while it works, then the table and where to look.

Registered into `denoise-node` through the ``denoise_node.commands`` entry point, like the trainer's commands.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from denoise_demo.driver import DemoError, DemoOptions, DemoUI, SeriesProgress, run_demo
from denoise_demo.report import DemoResult

log = logging.getLogger(__name__)
console = Console(stderr=True, soft_wrap=True)
out = Console(width=None if sys.stdout.isatty() else 200)


class RichUI(DemoUI):
    """One bar per stage: synthesis, then received → complete → denoising k/N → sent."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def _task(self, name: str, total: int) -> TaskID:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total or None, info="")
        return self.tasks[name]

    def stage(self, name: str, total: int) -> None:
        self._task(name, total)

    def advance(self, name: str, done: int, total: int) -> None:
        self.progress.update(self._task(name, total), completed=done, total=total)

    def note(self, text: str) -> None:
        self.progress.console.print(escape(text))

    def series(self, progress: SeriesProgress, expected: int, stored: int) -> None:
        received = self._task("received by the node", expected)
        self.progress.update(received, completed=progress.received, info=progress.state)
        if progress.state in ("PROCESSING", "DERIVED", "SENDING", "SENT") or progress.slices_total:
            total = progress.slices_total or expected
            self.progress.update(self._task("denoised", total), completed=progress.slices_done, total=total)
        if progress.derived_series_uid:
            total = progress.slices_total or expected
            self.progress.update(self._task("stored in the PACS", total), completed=stored, total=total)


def _fmt(value: float, digits: int, signed: bool = False) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def results_table(result: DemoResult) -> Table:
    """LD vs HD and denoised vs HD (the table the issue asks for), plus the noise-free comparison."""
    table = Table(
        title=f"{result.slices} slices · model {result.derivation_key} · PACS {result.pacs} · sent by {result.scu}",
        caption="PSNR/SSIM in the model's [−1, 1] HU normalisation; noise std = std of (image − noise-free) in flat "
        "body windows; HU bias = mean (image − HD) in the body. HD is itself noisy: see docs/model-card.md.",
    )
    for col in ("", "PSNR vs HD dB", "SSIM vs HD", "noise std HU", "HU bias vs HD", "PSNR vs noise-free dB", "s/slice"):
        table.add_column(col, justify="left" if not col else "right")
    for name in ("LD", "denoised", "HD"):
        m = result.metrics.get(name, {})
        table.add_row(
            {"LD": "LD (input)", "denoised": "denoised (node)", "HD": "HD (regular dose)"}[name],
            _fmt(m.get("psnr_vs_hd", math.nan), 2),
            _fmt(m.get("ssim_vs_hd", math.nan), 4),
            _fmt(m.get("noise_std_hu", math.nan), 1),
            _fmt(m.get("hu_bias_vs_hd", math.nan), 1, signed=True),
            _fmt(m.get("psnr_vs_ref", math.nan), 2),
            _fmt(result.seconds_per_slice, 3) if name == "denoised" else "",
        )
    return table


def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the study, node, PACS and results.")] = Path(
        "demo-out"
    ),
    slices: Annotated[int, typer.Option(help="Axial slices in the study.")] = 24,
    size: Annotated[int, typer.Option(help="Matrix size (pixels).")] = 512,
    seed: Annotated[int, typer.Option(help="Synthetic patient seed (0 is the model's training archive).")] = 2026,
    body_part: Annotated[str, typer.Option(help="abdomen or chest.")] = "abdomen",
    pacs: Annotated[str, typer.Option(help="auto (Orthanc if installed), orthanc, or folder.")] = "auto",
    scu: Annotated[str, typer.Option(help="auto (dcmtk storescu if installed), storescu, or pynetdicom.")] = "auto",
    model: Annotated[str, typer.Option(help="Model JSON or folder; empty = the bundled model.")] = "",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    node_port: Annotated[int, typer.Option(help="Node DICOM port (0 = a free one).")] = 0,
    pacs_port: Annotated[int, typer.Option(help="PACS DICOM port (0 = a free one).")] = 0,
    http_port: Annotated[int, typer.Option(help="Orthanc HTTP port (0 = a free one).")] = 0,
    timeout: Annotated[float, typer.Option(help="Give up waiting for the derived series after this many s.")] = 1800,
    hold: Annotated[
        bool | None, typer.Option(help="Keep Orthanc up until Enter is pressed (default: when interactive).")
    ] = None,
) -> None:
    """Run one synthetic low-dose CT study through the node to a PACS and show the result.

    Example: `denoise-node demo --out demo-out` (what `make demo` runs; about 3–5 minutes on a 2-core CPU).
    """
    if body_part not in ("abdomen", "chest") or pacs not in ("auto", "orthanc", "folder"):
        raise typer.BadParameter("--body-part is abdomen|chest, --pacs is auto|orthanc|folder")
    if scu not in ("auto", "storescu", "pynetdicom"):
        raise typer.BadParameter("--scu is auto|storescu|pynetdicom")
    options = DemoOptions(
        out_dir=out_dir,
        slices=slices,
        size=size,
        seed=seed,
        body_part=body_part,  # type: ignore[arg-type]
        pacs=pacs,  # type: ignore[arg-type]
        scu=scu,  # type: ignore[arg-type]
        model=model,
        device=device,
        node_port=node_port,
        pacs_port=pacs_port,
        http_port=http_port,
        timeout_s=timeout,
        hold=sys.stdin.isatty() if hold is None else hold,
    )
    progress = Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )

    def ready(result: DemoResult) -> None:
        """Called while the PACS still runs: show the result, and hold Orthanc open for the user if asked."""
        progress.stop()
        _show(result)
        if options.hold and result.pacs_url.startswith("http"):
            console.print(f"The derived series is in Orthanc: {result.pacs_url}  (press Enter to stop Orthanc)")
            try:
                input()
            except EOFError:
                pass

    try:
        with progress:
            run_demo(options, RichUI(progress), on_ready=ready)
    except DemoError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: the node and the PACS were stopped[/yellow]")
        raise typer.Exit(130) from None
    console.print("stopped the node and the PACS")


def _show(result: DemoResult) -> None:
    out.print(results_table(result))
    gain = result.metrics["denoised"]["psnr_vs_hd"] - result.metrics["LD"]["psnr_vs_hd"]
    out.print(f"denoised vs LD: {gain:+.2f} dB PSNR against HD")
    out.print(result.report)
    out.print(f"montage (LD | denoised | HD | noise-free, soft-tissue and lung windows): {result.montage}")
    out.print(f"all figures: {Path(result.montage).with_name('results.json')}")


def register(app: typer.Typer) -> None:
    """Entry point: add `demo` to `denoise-node`."""
    app.command()(demo)
