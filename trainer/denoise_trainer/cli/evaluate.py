"""`evaluate`: score a model on a split role (the work is in ``denoise_trainer.evaluate.workflow``) and show it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from denoise_trainer.cli.terminal import CatalogOption, console, out


def evaluate(
    model: Annotated[str, typer.Option(help="Model .json/.safetensors or registry directory; '' = bundled.")] = "",
    catalog: CatalogOption = "sqlite:///archive.sqlite",
    role: Annotated[str, typer.Option(help="Split role to evaluate on: test or val.")] = "test",
    out_dir: Annotated[Path, typer.Option(help="JSON, CSV and montages go here.")] = Path("eval-out"),
    reference: Annotated[str, typer.Option(help="HD (as in the method) or REF (noise-free, synthetic only).")] = "HD",
    max_slices: Annotated[int, typer.Option(help="Evaluate at most this many slices (0 = all).")] = 0,
    baselines: Annotated[bool, typer.Option(help="Also run Gaussian and non-local means (tuned on val).")] = True,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    val_catalog: Annotated[
        str | None, typer.Option(help="Catalog whose val patients tune the baselines (default: --catalog).")
    ] = None,
    strength: Annotated[float, typer.Option(min=0.0, max=1.0, help="The node's [model] strength to evaluate.")] = 1.0,
    self_ensemble: Annotated[
        int, typer.Option(help="The node's [model] self_ensemble: 0 = the model's own, 1 = off, 2, 4 or 8.")
    ] = 0,
) -> None:
    """Evaluate a model on the paired test split: PSNR, SSIM, MS-SSIM, HU bias, noise; vs LD and classical baselines.

    With the noise-free REF (synthetic archives) it also writes the scorecard (scorecard.md/json): error, PSNR and
    SSIM against REF in soft tissue, HU bias in fat and soft tissue, noise texture relative to HD, lesions, guard
    flags, per patient with bootstrap 95 % intervals. Baselines are tuned on the validation patients of
    --val-catalog (a fresh test archive has none of its own), against REF in the soft-tissue window when there is one.

    Example: `denoise-node evaluate --model models/cyclegan.json --catalog sqlite:///data/archive.sqlite`
    """
    from denoise_trainer.evaluate.comparison import render_table
    from denoise_trainer.evaluate.scorecard import markdown as scorecard_markdown
    from denoise_trainer.evaluate.workflow import EvaluationError, EvaluationOptions, evaluate_model

    options = EvaluationOptions(
        catalog_url=catalog,
        model=model,
        role=role,
        reference=reference,
        max_slices=max_slices,
        baselines=baselines,
        device=device,
        val_catalog_url=val_catalog,
        strength=strength,
        self_ensemble=self_ensemble,
    )
    try:
        outcome = evaluate_model(options, out_dir)
    except EvaluationError as exc:
        if exc.param_hint:
            raise typer.BadParameter(str(exc), param_hint=exc.param_hint) from exc
        console.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(exc.exit_code) from exc
    if outcome.scorecard is not None:
        out.print(scorecard_markdown(outcome.scorecard))
    if outcome.safety is not None:
        out.print(safety_table(outcome.safety))
    out.print(render_table(outcome.report))
    out.print(f"written: {out_dir}/evaluation.json, evaluation.csv, evaluation.md, montage.png (+ safety.json/md)")


def safety_table(data: dict[str, Any]) -> Table:
    """Lesion preservation per method, size and contrast (the model card's table), as a rich table."""
    table = Table(title="lesions: contrast kept (1 = as inserted), CNR gain over LD, lesions lost")
    for col in ("method", "radius", "contrast", "n", "kept", "CNR gain", "lost"):
        table.add_column(col)
    for r in data["lesion_table"]:
        table.add_row(
            r["method"], r["size"], r["contrast"], str(r["lesions"]), f"{r['contrast_kept']:.2f}",
            f"{r['cnr_gain']:.2f}", str(r["lost"]),
        )  # fmt: skip
    return table
