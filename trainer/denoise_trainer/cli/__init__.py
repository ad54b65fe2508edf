"""The physicist's commands: synth, catalog scan/list/split, train, evaluate, model export/list.

Registered into `denoise-node` through the ``denoise_node.commands`` entry point, so the node package never imports
the trainer (the node runs where the trainer's extras are not installed).
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from denoise_trainer.extras import needs_train_extra
from dicom_denoise_node.config import ConfigError, redact_url

log = logging.getLogger(__name__)
console = Console(stderr=True, soft_wrap=True)
out = Console(width=None if sys.stdout.isatty() else 200)  # pipes and logs get whole rows

CatalogOption = Annotated[
    str,
    typer.Option("--catalog", help="SQLAlchemy URL of the archive catalog, e.g. sqlite:///data/archive.sqlite."),
]
catalog_app = typer.Typer(help="Index archived LD/HD studies and split them by patient.", no_args_is_help=True)
model_app = typer.Typer(help="Export and list models (safetensors + JSON metadata).", no_args_is_help=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )


def _catalog(url: str):  # noqa: ANN202 - returns dicom_denoise_node.store.catalog.Catalog
    from dicom_denoise_node.store.catalog import Catalog

    return Catalog(url)


def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder for the archive (one folder per patient).")],
    patients: Annotated[int, typer.Option(help="Number of patients (studies).")] = 4,
    slices: Annotated[int, typer.Option(help="Axial slices per series.")] = 24,
    size: Annotated[int, typer.Option(help="Matrix size (pixels).")] = 512,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same archive.")] = 0,
    views: Annotated[int | None, typer.Option(help="Projection views (default ≈ π/2 · size).")] = None,
    device: Annotated[str, typer.Option(help="Where projection and FBP run: cpu or cuda.")] = "cpu",
    vary: Annotated[
        bool, typer.Option(help="Draw each patient's dose, LD fraction, kernel, field of view and detector noise.")
    ] = False,
) -> None:
    """Synthesise a CT archive: LD (quarter dose), HD and noise-free series per patient, Poisson noise on projections.

    Example: `denoise-node synth data/archive --patients 20 --slices 32 --seed 0`
    """
    from denoise_trainer.archive.synth import synthesize_archive

    with _progress() as bar:
        task = bar.add_task("simulating slices", total=patients * slices, info="")
        start = time.perf_counter()
        records = synthesize_archive(
            out_dir,
            patients,
            slices,
            size=size,
            seed=seed,
            views=views,
            device=device,
            vary=vary,
            progress=lambda k, n: bar.update(task, completed=k, total=n),
        )
    seconds = time.perf_counter() - start
    out.print(
        f"{len(records)} patients × {slices} slices ({size}²) in {out_dir}: "
        f"{seconds / max(1, patients * slices):.2f} s per slice position (LD + HD + REF)"
    )


@catalog_app.command("scan")
def catalog_scan(
    root: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Archive folder to index.")],
    catalog: CatalogOption = "sqlite:///archive.sqlite",
    domain: Annotated[str | None, typer.Option(help="Force the dose domain of every series: LD, HD or REF.")] = None,
    ld_max_mas: Annotated[float | None, typer.Option(help="Exposure (mAs) at or below which a series is LD.")] = None,
    hd_min_mas: Annotated[float | None, typer.Option(help="Exposure (mAs) at or above which a series is HD.")] = None,
) -> None:
    """Index DICOM folders into the catalog (idempotent); each series gets a dose domain from the rules.

    Example: `denoise-node catalog scan data/archive --catalog sqlite:///data/archive.sqlite`
    """
    from denoise_trainer.archive.scan import DomainRules, scan_archive

    rules = DomainRules(ld_max_mas=ld_max_mas, hd_min_mas=hd_min_mas)
    cat = _catalog(catalog)
    with _progress() as bar:
        task = bar.add_task("scanning", total=None, info="")
        report = scan_archive(cat, root, rules, domain, progress=lambda k, n: bar.update(task, completed=k, total=n))
    cat.close()
    out.print(
        f"{report.files_seen} files: {report.instances_added} added, {report.instances_updated} updated, "
        f"{report.instances_unchanged} unchanged, {report.instances_removed} removed; series per domain: "
        f"{dict(report.series_by_domain)}; {len(report.skipped)} skipped"
    )
    for path, reason in list(report.skipped.items())[:10]:
        out.print(f"  skipped {escape(str(path))}: {escape(reason)}")


@catalog_app.command("list")
def catalog_list(catalog: CatalogOption = "sqlite:///archive.sqlite") -> None:
    """List the archive's series with their domain, body part and split role.

    Example: `denoise-node catalog list --catalog sqlite:///data/archive.sqlite`
    """
    from denoise_trainer.archive.scan import archive_overview
    from denoise_trainer.archive.split import training_pairs

    cat = _catalog(catalog)
    rows = archive_overview(cat)
    try:
        pairs = training_pairs(cat)
    except ValueError:  # no split yet: pairs are counted among training patients only
        pairs = None
    cat.close()
    table = Table(title=f"archive in {catalog}")
    for col in ("patient", "series UID", "description", "domain", "body part", "instances", "split"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r["patient_id"]),
            str(r["series_uid"]),
            str(r["description"]),
            str(r["domain"]),
            str(r["body_part"]),
            str(r["instances"]),
            str(r["split"] or ""),
        )
    out.print(table)
    if pairs is None:
        out.print("LD/HD training pairs: no split yet (run `denoise-node catalog split`)")
    else:
        patients = len({p.patient_id for p in pairs})
        out.print(
            f"LD/HD training pairs (same patient, frame of reference and slice position; for `train --pairing "
            f"paired`): {len(pairs)} slices of {patients} patients"
        )


@catalog_app.command("split")
def catalog_split(
    catalog: CatalogOption = "sqlite:///archive.sqlite",
    seed: Annotated[int, typer.Option(help="The same seed gives the same split.")] = 0,
    force: Annotated[bool, typer.Option(help="Replace an existing split made with another seed.")] = False,
    test: Annotated[float, typer.Option(help="Fraction of patients for test (0 when a fresh archive tests).")] = 0.15,
    val: Annotated[float, typer.Option(help="Fraction of patients for validation (choices are made there).")] = 0.05,
) -> None:
    """Patient-level split ≈80/15/5 (train/test/val), stratified by body part; LD and HD training patients disjoint.

    `--test 1 --val 0` makes a held-out test archive; `--test 0 --val 0.12` a training archive whose test patients
    come from another archive made with another seed.

    Example: `denoise-node catalog split --catalog sqlite:///data/archive.sqlite --seed 0`
    """
    from denoise_trainer.archive.split import make_split, split_summary

    cat = _catalog(catalog)
    try:
        roles = make_split(cat, seed=seed, fractions=(1.0 - test - val, test, val), force=force)
    except ValueError as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from exc
    summary = split_summary(cat)
    cat.close()
    table = Table(title=f"split (seed {seed})")
    for col in ("role", "patients", "slices"):
        table.add_column(col)
    for role, ids in roles.items():
        table.add_row(role, str(len(ids)), str(summary.get(role, {}).get("slices", 0)))
    out.print(table)


def _load_training_data(catalog_url: str, pairing: str = "unpaired"):  # noqa: ANN202
    from denoise_trainer.archive.split import paired_slices, training_files, training_pairs
    from denoise_trainer.data.patches import load_slices
    from denoise_trainer.train.loop import TrainingData, data_fingerprint

    cat = _catalog(catalog_url)
    try:
        if pairing == "paired":  # LD and HD of the same slices of every training patient
            pairs = training_pairs(cat)
            ld_files, hd_files = [p.ld for p in pairs], [p.hd for p in pairs]
            out.print(f"paired training: {len(pairs)} LD/HD pairs of {len({p.patient_id for p in pairs})} patients")
        else:
            ld_files, hd_files = training_files(cat, "LD"), training_files(cat, "HD")
        val = paired_slices(cat, "val")
    except ValueError as exc:
        raise ConfigError(f"{exc} (run `denoise-node catalog scan` and `denoise-node catalog split` first)") from exc
    finally:
        cat.close()
    if not ld_files or not hd_files:
        raise ConfigError("the split has no LD or no HD training slices")
    with _progress() as bar:
        with_ref = [p for p in val if p.ref is not None]
        task = bar.add_task("loading slices", total=len(ld_files) + len(hd_files) + 3 * len(val), info="")
        step = lambda k, n: bar.advance(task)  # noqa: E731
        ld, hd = load_slices(ld_files, step), load_slices(hd_files, step)
        val_ld, val_hd = load_slices([p.ld for p in val], step), load_slices([p.hd for p in val], step)
        # REF (noise-free, synthetic archives) scores every checkpoint; real archives have none.
        val_ref = load_slices([p.ref for p in val], step) if val and len(with_ref) == len(val) else []
    description = {
        "catalog": redact_url(catalog_url),  # exported with the model: never a password
        "pairing": pairing,
        "ld_slices": len(ld),
        "hd_slices": len(hd),
        "val_slices": len(val_ld),
        "ld_fingerprint": data_fingerprint(ld_files),
        "hd_fingerprint": data_fingerprint(hd_files),
    }
    return TrainingData(ld, hd, val_ld, val_hd, val_ref, description)


def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Training TOML ([train] table).")] = None,
    preset: Annotated[str, typer.Option(help="method (the paper's settings), cpu, or tiny.")] = "cpu",
    catalog: Annotated[str | None, typer.Option(help="Archive catalog URL (overrides the config).")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Checkpoints, TensorBoard logs and samples go here.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the preset's epochs.")] = None,
    iters_per_epoch: Annotated[int | None, typer.Option(help="Override iterations per epoch.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop (with a checkpoint) after this many steps.")] = None,
    seed: Annotated[int | None, typer.Option(help="Training seed.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Checkpoint to continue from, exactly.")] = None,
    pairing: Annotated[
        str | None, typer.Option(help="unpaired (the method's CycleGAN) or paired (LD/HD pairs, Noise2Noise).")
    ] = None,
    engine: Annotated[
        str, typer.Option(help="standard (resumable, DDP) or fast (one GPU: step kept on the device, compiled).")
    ] = "standard",
) -> None:
    """Train the CycleGAN of the method on the catalog's training split (torchrun for several GPUs or nodes).

    Example: `denoise-node train --preset cpu --catalog sqlite:///data/archive.sqlite --run-dir runs/cpu`
    """
    from denoise_trainer.train.loop import TrainingCollapsed
    from denoise_trainer.train.loop import train as run_training
    from denoise_trainer.train.recipe import build_config

    overrides = dict(
        catalog_url=catalog,
        run_dir=run_dir,
        device=device,
        epochs=epochs,
        iters_per_epoch=iters_per_epoch,
        max_steps=max_steps,
        seed=seed,
        pairing=pairing,
    )
    try:
        cfg = build_config(preset, config, overrides)
        if not cfg.catalog_url:
            raise ConfigError("no catalog: give --catalog URL or catalog_url in the training config")
        data = _load_training_data(cfg.catalog_url, cfg.pairing)
    except ConfigError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    from denoise_trainer.train.loop import iterations_per_epoch

    total = cfg.max_steps or cfg.epochs * iterations_per_epoch(cfg, len(data.ld))
    with _progress() as bar:
        task = bar.add_task("training", total=total, info="")

        def on_step(step: int, epoch: int, losses: dict[str, float]) -> None:
            info = f"epoch {epoch + 1}/{cfg.epochs} G {losses['g_total']:.3f}"
            if "g_cycle" in losses:
                info += f" cyc {losses['g_cycle']:.3f} D {losses['d_ld'] + losses['d_hd']:.3f}"
            if "val_error_hu" in losses:
                info += f" val {losses['val_error_hu']:.2f} HU"
            if "samples_per_s" in losses:
                info += f" {losses['samples_per_s']:.1f} samples/s"
            bar.update(task, completed=step, info=info)

        try:
            if cfg.pairing == "paired":
                from denoise_trainer.train.paired import train_paired

                result = train_paired(cfg, data, resume=resume, on_step=on_step)
            elif engine == "fast":
                from denoise_trainer.train.device_feed import train_fast

                if resume is not None:
                    raise ConfigError("--engine fast does not resume; use the standard engine to continue a run")
                result = train_fast(cfg, data, on_step=on_step)
            else:
                result = run_training(cfg, data, resume=resume, on_step=on_step)
        except TrainingCollapsed as exc:
            console.print(f"[bold red]training stopped:[/] {escape(str(exc))}")
            raise typer.Exit(1) from exc
        except ConfigError as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(2) from exc
    out.print(f"trained {result.steps} steps ({result.epochs_done} epochs); last checkpoint: {result.checkpoint}")
    if result.best_checkpoint is not None:
        best = min(result.validation, key=lambda r: r["val_error_hu"])
        out.print(
            f"best on the validation patients: step {best['step']}, error vs REF {best['val_error_hu']:.2f} HU "
            f"({best['val_error_vs_hd']:.3f} × HD's): {result.best_checkpoint}"
        )
    out.print(f"export it with: denoise-node model export {result.checkpoint} --name NAME --version VERSION")


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
    from denoise_trainer.archive.split import paired_slices
    from denoise_trainer.data.patches import load_slices
    from denoise_trainer.evaluate.baselines import classical_baselines
    from denoise_trainer.evaluate.comparison import evaluate as run_eval
    from denoise_trainer.evaluate.comparison import markdown_table, render_table
    from denoise_trainer.evaluate.image_metrics import EvalSlice
    from denoise_trainer.evaluate.lesions import SafetyScores
    from denoise_trainer.evaluate.lesions import markdown_tables as lesion_markdown
    from denoise_trainer.evaluate.montage import save_montage
    from denoise_trainer.evaluate.scorecard import Scorecard
    from denoise_trainer.evaluate.scorecard import markdown as scorecard_markdown
    from dicom_denoise_node.config import DeriveSettings, ModelSettings
    from dicom_denoise_node.denoise.inference import select_device
    from dicom_denoise_node.denoise.series import SeriesDenoiser
    from dicom_denoise_node.model.registry import ModelError, load_model, resolve_model_path

    try:
        dev = select_device(device)
        network, info = load_model(resolve_model_path(model), dev)
    except (ModelError, RuntimeError) as exc:
        console.print(f"[red]cannot load model:[/] {escape(str(exc))}")
        raise typer.Exit(3) from exc
    cat = _catalog(catalog)
    try:
        pairs = paired_slices(cat, role)
    except ValueError as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(2) from exc
    finally:
        cat.close()
    val_pairs = []
    if baselines:
        vcat = _catalog(val_catalog or catalog)
        try:
            val_pairs = paired_slices(vcat, "val")
        except ValueError as exc:
            console.print(f"[red]{escape(str(exc))}[/]")
            raise typer.Exit(2) from exc
        finally:
            vcat.close()
    if max_slices and len(pairs) > max_slices:
        # Evenly spaced over the split, so every test patient and body part is represented.
        pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, max_slices).round().astype(int)]
    if not pairs:
        console.print(f"[red]no paired {role} slices in the catalog[/]")
        raise typer.Exit(2)

    def to_eval(ps: list) -> list[EvalSlice]:  # type: ignore[type-arg]
        lds, hds = load_slices([p.ld for p in ps]), load_slices([p.hd for p in ps])
        refs = load_slices([p.ref for p in ps]) if all(p.ref for p in ps) else [None] * len(ps)
        return [
            EvalSlice(p.patient_id, p.body_part or "", p.instance_number, a, b, r)
            for p, a, b, r in zip(ps, lds, hds, refs, strict=True)
        ]

    slices = to_eval(pairs)
    # The model runs through the node's own tiler and HU handling: what is evaluated is what the PACS gets.
    try:
        settings = ModelSettings(strength=strength, self_ensemble=self_ensemble)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--self-ensemble") from exc
    denoiser = SeriesDenoiser(network, info, settings, DeriveSettings(), device=str(dev))
    methods = {"model": lambda xs: list(denoiser.denoise_hu(iter(xs)))}
    with_ref = all(s.ref is not None for s in slices)
    if baselines:
        if val_pairs:
            # Evenly spread over the validation patients; tuned where they are scored: vs REF in soft tissue.
            picked = [val_pairs[i] for i in np.linspace(0, len(val_pairs) - 1, min(8, len(val_pairs))).astype(int)]
            val_slices = to_eval(picked)
            tune_ref = with_ref and all(v.ref is not None for v in val_slices)
            methods.update(
                classical_baselines(
                    val_slices, reference="REF" if tune_ref else "HD", metric="psnr_soft" if tune_ref else "psnr"
                )
            )
        else:
            methods.update(classical_baselines(None))
    truths = _lesion_truths(pairs)
    safety = SafetyScores()
    card = Scorecard(slices, lesions=truths) if with_ref else None

    def score_safety(method: str, i: int, image: np.ndarray) -> None:
        if truths[i] is not None:
            safety.add(method, image, slices[i].ref, truths[i])
        if card is not None:
            card.add(method, i, image)

    report = run_eval(
        slices,
        methods,
        hu_window=(info.hu_min, info.hu_max),
        reference=reference,
        per_output=score_safety,
        include_hd=card is not None,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    report.settings["model"] = {"name": info.name, "version": info.version, "sha256": info.sha256}
    report.settings["strength"] = strength
    report.settings["self_ensemble"] = denoiser.self_ensemble
    report.to_json(out_dir / "evaluation.json")
    if card is not None:
        summary = card.summary(safety.lesions)
        summary["model_info"] = {
            "name": info.name,
            "version": info.version,
            "strength": strength,
            "self_ensemble": denoiser.self_ensemble,
        }
        (out_dir / "scorecard.json").write_text(json.dumps(summary, indent=1, default=float))
        (out_dir / "scorecard.md").write_text(scorecard_markdown(summary))
        out.print(scorecard_markdown(summary))
    report.to_csv(out_dir / "evaluation.csv")
    (out_dir / "evaluation.md").write_text(markdown_table(report))
    if any(t is not None for t in truths):
        for i, s in enumerate(slices):  # the noise-free image against the truth: the scoring's own check
            if s.ref is not None:
                score_safety("REF", i, s.ref)
        safety_data = safety.to_json()
        (out_dir / "safety.json").write_text(json.dumps(safety_data, indent=1, default=float))
        (out_dir / "safety.md").write_text(lesion_markdown(safety_data))
        out.print(safety_table(safety_data))
    first = slices[len(slices) // 2]
    columns = {"LD": first.ld, "model": methods["model"]([first.ld])[0], "HD": first.hd}
    if first.ref is not None:
        columns["noise-free"] = first.ref
    h, w = first.ld.shape
    save_montage(out_dir / "montage.png", columns, inset=(h // 2 - h // 16, w // 2 - w // 16, h // 8))
    out.print(render_table(report))
    out.print(f"written: {out_dir}/evaluation.json, evaluation.csv, evaluation.md, montage.png (+ safety.json/md)")


def _lesion_truths(pairs: list) -> list:  # type: ignore[type-arg]
    """Each test slice's lesions from its synthetic patient's truth.json (None for real data without one)."""
    from denoise_trainer.evaluate.lesions import load_truth

    cache: dict[Path, dict | None] = {}  # type: ignore[type-arg]
    out = []
    for p in pairs:
        patient_dir = Path(p.ld).parent.parent
        if patient_dir not in cache:
            cache[patient_dir] = load_truth(patient_dir) if (patient_dir / "truth.json").exists() else None
        truth = cache[patient_dir]
        out.append(None if truth is None else truth.get(int(p.instance_number), []))
    return out


def safety_table(data: dict) -> Table:  # type: ignore[type-arg]
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


@model_app.command("export")
def model_export(
    checkpoint: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Training checkpoint (.pt).")],
    name: Annotated[str, typer.Option(help="Model name (file stem).")] = "cyclegan-ld2hd",
    version: Annotated[str, typer.Option(help="Model version (part of the derived UIDs).")] = "1.0.0",
    out_dir: Annotated[Path, typer.Option(help="Registry directory.")] = Path("models"),
    evaluation: Annotated[Path | None, typer.Option(help="evaluation.json from `evaluate` to embed.")] = None,
    activate: Annotated[bool, typer.Option(help="Mark it ACTIVE in the registry.")] = False,
    self_ensemble: Annotated[
        int, typer.Option(help="Flips/turns per tile the model is meant to be averaged over (1, 2, 4, 8).")
    ] = 1,
) -> None:
    """Export the LD→HD generator of a checkpoint as the node's model (safetensors + metadata).

    Example: `denoise-node model export runs/cpu/checkpoints/last.pt --name cyclegan-ld2hd --version 1.0.0`
    """
    from denoise_trainer.export import export_checkpoint

    figures = None
    if evaluation is not None:
        data = json.loads(evaluation.read_text())
        figures = {
            "reference": data.get("reference"),
            "summary": data.get("summary", []),
            "settings": data.get("settings", {}),
        }
    try:
        info = export_checkpoint(
            checkpoint, out_dir, name, version, figures, activate, shlex.join(sys.argv), self_ensemble
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--self-ensemble") from exc
    out.print(f"exported {info.label} → {info.weights_path} (sha256 {info.sha256[:16]}…)")


@model_app.command("list")
def model_list(
    directory: Annotated[Path | None, typer.Argument(help="Registry directory (default: the bundled models).")] = None,
) -> None:
    """List models in a registry directory.

    Example: `denoise-node model list models/`
    """
    from dicom_denoise_node.model.registry import ACTIVE_FILE, BUNDLED_DIR, list_models

    directory = directory or BUNDLED_DIR
    active = (directory / ACTIVE_FILE).read_text().strip() if (directory / ACTIVE_FILE).exists() else ""
    table = Table(title=f"models in {directory}")
    columns = ("name", "version", "architecture", "training", "HU window", "steps", "self-ensemble", "sha256", "active")
    for col in columns:
        table.add_column(col)
    for m in list_models(directory):
        if m.architecture.get("type") == "residual_cnn":
            arch = f"residual CNN {m.architecture.get('filters')}f/{m.architecture.get('layers')}l"
        elif m.architecture.get("type") == "residual_unet":
            arch = f"residual U-Net {m.architecture.get('filters')}f"
        else:
            arch = f"ResNet {m.architecture.get('filters')}f/{m.architecture.get('blocks')}b"
        pairing = m.training.get("config", {}).get("pairing", "unpaired")
        table.add_row(
            m.name,
            m.version,
            arch,
            pairing,
            f"{m.hu_min:g}…{m.hu_max:g}",
            str(m.training.get("steps", "")),
            f"× {m.self_ensemble}" if m.self_ensemble > 1 else "off",
            m.sha256[:12],
            "yes" if m.name == active else "",
        )
    out.print(table)


def register(app: typer.Typer) -> None:
    """Entry point: add the trainer's commands to `denoise-node`."""
    app.command()(needs_train_extra(synth))
    app.command()(needs_train_extra(train))
    app.command()(needs_train_extra(evaluate))
    app.add_typer(catalog_app, name="catalog")
    app.add_typer(model_app, name="model")
