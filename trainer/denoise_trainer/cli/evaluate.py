"""`evaluate`: score a model on a split role (the work is in ``denoise_trainer.evaluate.workflow``) and show it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from denoise_trainer.cli.terminal import CatalogOption, console, out

if TYPE_CHECKING:
    from denoise_trainer.evaluate.workflow import EvaluationOptions


def evaluate(
    model: Annotated[
        list[str] | None,
        typer.Option(help="Checkpoint (.pt) or model (.json/.safetensors/registry dir); none = bundled."),
    ] = None,
    catalog: CatalogOption = "sqlite:///archive.sqlite",
    role: Annotated[str, typer.Option(help="Split role to evaluate on: test or val.")] = "test",
    out_dir: Annotated[Path, typer.Option(help="JSON, CSV and montages go here.")] = Path("eval-out"),
    lesions: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Lesion manifest, CSV (docs); default: truth.json, if any."),
    ] = None,
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
    target_noise_hu: Annotated[
        float | None,
        typer.Option(min=0.0, help="The node's [model] target_noise_hu: unset = the model's own, 0 = none."),
    ] = None,
    dose_sweep: Annotated[
        bool, typer.Option(help="Instead: the dose sweep (no catalog): output noise / HD noise at LD 15-70 HU.")
    ] = False,
    sweep_levels: Annotated[
        str, typer.Option(help="Dose sweep: LD noise levels, HU, comma-separated ('' = 15,24,33,44,56,70).")
    ] = "",
    sweep_patients: Annotated[int, typer.Option(min=1, help="Dose sweep: phantom patients (abdomen, chest, ...).")] = 2,
    sweep_slices: Annotated[int, typer.Option(min=1, help="Dose sweep: slices per patient.")] = 2,
    sweep_size: Annotated[int, typer.Option(min=32, help="Dose sweep: image size, px (358 mm field of view).")] = 512,
    sweep_seed: Annotated[int | None, typer.Option(help="Dose sweep: anatomy and noise seed (default 2828).")] = None,
    sweep_views: Annotated[int, typer.Option(help="Dose sweep: projection views (0 = the simulator's default).")] = 0,
    sweep_nlm_h: Annotated[
        float, typer.Option(help="Dose sweep: also non-local means at h = this x sigma (0 = off; tuned value: 5).")
    ] = 0.0,
) -> None:
    """Evaluate a model on the paired test split: PSNR, SSIM, MS-SSIM, HU bias, noise; vs LD and classical baselines.

    With the noise-free REF (synthetic archives) it also writes the scorecard (scorecard.md/json): error, PSNR and
    SSIM against REF in soft tissue, HU bias in fat and soft tissue, noise texture relative to HD, lesions, guard
    flags, per patient with bootstrap 95 % intervals. Baselines are tuned on the validation patients of
    --val-catalog (a fresh test archive has none of its own), against REF in the soft-tissue window when there is one.

    --model takes a training checkpoint as well (its generator, as `model export` would write it), so that a model is
    evaluated first and exported once, with `model export --evaluation OUT/evaluation.json`. Lesion figures need
    lesion truth: --lesions FILE (docs/training.md), or the synthetic archive's truth.json; without either they say
    "no lesion truth: not computed".

    --dose-sweep instead: fixed phantom slices at HD and at LD calibrated to each level, each --model's noise / HD's.

    Example: `denoise-node evaluate --model run/checkpoints/best.pt --catalog sqlite:///data/archive.sqlite`
    """
    if dose_sweep:
        scan = {"patients": sweep_patients, "slices": sweep_slices, "size": sweep_size, "views": sweep_views or None}
        scan.update(levels=sweep_levels, seed=sweep_seed)
        node = {"strength": strength, "self_ensemble": self_ensemble, "target_noise_hu": target_noise_hu}
        return _dose_sweep(scan, model or [], out_dir, device, node, sweep_nlm_h)
    if model and len(model) > 1:
        raise typer.BadParameter("one model at a time (several only with --dose-sweep)", param_hint="--model")
    from denoise_trainer.evaluate.workflow import EvaluationOptions

    options = EvaluationOptions(
        catalog_url=catalog,
        model=model[0] if model else "",
        role=role,
        reference=reference,
        max_slices=max_slices,
        baselines=baselines,
        device=device,
        val_catalog_url=val_catalog,
        strength=strength,
        self_ensemble=self_ensemble,
        target_noise_hu=target_noise_hu,
        lesions=lesions,
    )
    _run(options, out_dir)


def _run(options: EvaluationOptions, out_dir: Path) -> None:
    """Evaluate, then show the reports, what was not computed, and only the files that were written."""
    from denoise_trainer.evaluate.comparison import render_table
    from denoise_trainer.evaluate.scorecard import NO_LESION_TRUTH
    from denoise_trainer.evaluate.scorecard import markdown as scorecard_markdown
    from denoise_trainer.evaluate.workflow import EvaluationError, evaluate_model

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
    if outcome.lesion_truth is None and outcome.scorecard is None:  # the scorecard says it itself
        out.print(f"lesions: {NO_LESION_TRUTH} (give --lesions FILE, a lesion manifest)", markup=False)
    out.print(f"written: {out_dir}/" + ", ".join(p.name for p in outcome.written), markup=False)


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


def _levels(text: str) -> tuple[float, ...]:
    try:
        levels = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise typer.BadParameter(f"not a list of numbers: {text!r}", param_hint="--sweep-levels") from exc
    if not levels or min(levels) <= 0:
        raise typer.BadParameter("give one or more positive noise levels in HU", param_hint="--sweep-levels")
    return levels


def _dose_sweep(
    scan: dict[str, Any],
    models: list[str],
    out_dir: Path,
    device: str,
    node: dict[str, Any],
    nlm_h: float,
) -> None:
    """Run the sweep (denoise_trainer.evaluate.dose_sweep) and print its table."""
    from denoise_trainer.evaluate.dose_sweep import SweepOptions, markdown, run_dose_sweep
    from denoise_trainer.evaluate.workflow import EvaluationError

    levels, seed = scan.pop("levels"), scan.pop("seed")  # '' and None: the sweep's defaults
    scan |= {"levels_hu": _levels(levels)} if levels else {}
    scan |= {} if seed is None else {"seed": seed}
    try:
        result, written = run_dose_sweep(
            SweepOptions(**scan),
            models,
            out_dir,
            device=device,
            nlm_h=nlm_h,
            **node,
        )
    except EvaluationError as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(exc.exit_code) from exc
    out.print(markdown(result), markup=False)
    out.print("written: " + ", ".join(str(p) for p in written), markup=False)
