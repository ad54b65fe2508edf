"""`synth` and `catalog scan/list/split`: build or index an archive and split it by patient."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from denoise_trainer.cli.terminal import CatalogOption, console, out, progress_bar

catalog_app = typer.Typer(help="Index archived LD/HD studies and split them by patient.", no_args_is_help=True)


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
    span: Annotated[
        bool, typer.Option(help="Draw each patient's protocol across what sites send: kernels, fan/parallel, dose.")
    ] = False,
    ood: Annotated[
        bool,
        typer.Option(help="Out-of-distribution test archive: a kernel, geometry, pixel size and dose never trained."),
    ] = False,
) -> None:
    """Synthesise a CT archive: LD (quarter dose), HD and noise-free series per patient, Poisson noise on projections.

    Example: `denoise-node synth data/archive --patients 20 --slices 32 --seed 0`
    (`--span` for the training span, `--ood` for the out-of-distribution test archive: docs/training.md)
    """
    from denoise_trainer.archive.synth import synthesize_archive

    if sum((vary, span, ood)) > 1:
        console.print("[red]--vary, --span and --ood are different archives: choose one[/]")
        raise typer.Exit(2)

    with progress_bar() as bar:
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
            span="span" if span else "ood" if ood else None,
            progress=lambda k, n: bar.update(task, completed=k, total=n),
        )
    seconds = time.perf_counter() - start
    out.print(
        f"{len(records)} patients × {slices} slices ({size}²) in {out_dir}: "
        f"{seconds / max(1, patients * slices):.2f} s per slice position (LD + HD + REF)"
    )


EXIT_UNKNOWN_SERIES = 3  # the scan indexed series whose dose domain no rule decided


@catalog_app.command("scan")
def catalog_scan(
    root: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Archive folder to index.")],
    catalog: CatalogOption = "sqlite:///archive.sqlite",
    rules: Annotated[
        Path | None,
        typer.Option(help="The site's own rules (TOML): name patterns per domain, dose thresholds, ratios."),
    ] = None,
    domain: Annotated[str | None, typer.Option(help="Force the dose domain of every series: LD, HD or REF.")] = None,
    ld_max_mas: Annotated[float | None, typer.Option(help="Exposure (mAs) at or below which a series is LD.")] = None,
    hd_min_mas: Annotated[float | None, typer.Option(help="Exposure (mAs) at or above which a series is HD.")] = None,
) -> None:
    """Index DICOM folders into the catalog (idempotent); each series gets a dose domain (LD, HD, REF).

    The domain comes from the names (QD/FD, quarter/full dose, low/standard dose, LD/HD/ND, ...) and, where they
    say nothing, from the dose (CTDIvol, mAs) relative to the patient's other series. Exit 3: some series have
    no domain (a summary says which and what to pass).

    Example: `denoise-node catalog scan data/archive --catalog sqlite:///data/archive.sqlite`
    """
    from denoise_trainer.archive.domain import DomainRules
    from denoise_trainer.archive.scan import scan_archive
    from denoise_trainer.archive.site_rules import load_rules
    from dicom_denoise_node.store.catalog import Catalog

    try:
        thresholds = {"ld_max_mas": ld_max_mas, "hd_min_mas": hd_min_mas}
        chosen = load_rules(rules, **thresholds) if rules is not None else DomainRules(**thresholds)
    except ValueError as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(2) from exc
    cat = Catalog(catalog)
    try:
        with progress_bar() as bar:
            task = bar.add_task("scanning", total=None, info="")
            report = scan_archive(cat, root, chosen, domain, lambda k, n: bar.update(task, completed=k, total=n))
    except ValueError as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(2) from exc
    finally:
        cat.close()
    out.print(
        f"{report.files_seen} files: {report.instances_added} added, {report.instances_updated} updated, "
        f"{report.instances_unchanged} unchanged, {report.instances_removed} removed; {len(report.skipped)} skipped"
    )
    for path, reason in list(report.skipped.items())[:10]:
        out.print(f"  skipped {escape(str(path))}: {escape(reason)}")
    _print_recognised(report.recognised)
    if report.unknown_series:
        for uid in report.unknown_series[:10]:
            console.print(f"  no dose domain: {escape(report.unknown_detail.get(uid, uid))}")
        console.print(
            f"[red]{len(report.unknown_series)} series have no dose domain[/] (indexed, but neither trained on nor "
            "evaluated). State the site's names or dose levels in a rules file (`--rules rules.toml`, see "
            "docs/training.md), or pass exposure thresholds (`--ld-max-mas` / `--hd-min-mas`), then scan again."
        )
        raise typer.Exit(EXIT_UNKNOWN_SERIES)


def _print_recognised(recognised: dict[str, dict[str, int]]) -> None:
    """The closing summary: series per domain and the rules that decided them."""
    table = Table(title="series per dose domain")
    for col in ("domain", "series", "recognised by"):
        table.add_column(col)
    for dom in sorted(recognised, key=lambda d: ("LD", "HD", "REF", "unknown").index(d)):
        by_rule = recognised[dom]
        how = ", ".join(f"{rule}: {n}" for rule, n in sorted(by_rule.items(), key=lambda kv: (-kv[1], kv[0])))
        how = "no rule decided" if dom == "unknown" else how
        table.add_row(dom, str(sum(by_rule.values())), escape(how))
    out.print(table)


@catalog_app.command("list")
def catalog_list(catalog: CatalogOption = "sqlite:///archive.sqlite") -> None:
    """List the archive's series with their domain, body part and split role.

    Example: `denoise-node catalog list --catalog sqlite:///data/archive.sqlite`
    """
    from denoise_trainer.archive.scan import archive_overview
    from denoise_trainer.archive.split import NoTrainingPairs, training_pairs
    from dicom_denoise_node.store.catalog import Catalog

    cat = Catalog(catalog)
    rows = archive_overview(cat)
    try:
        pairs = training_pairs(cat)
    except NoTrainingPairs:  # an unpaired archive: fine for unpaired training
        pairs = []
    except ValueError:  # no split yet: pairs are counted among training patients only
        pairs = None
    cat.close()
    table = Table(title=f"archive in {catalog}")
    keys = ("patient_id", "series_uid", "description", "domain", "body_part", "instances")
    for col in ("patient", "series UID", "description", "domain", "body part", "instances", "split"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r[k]) for k in keys), str(r["split"] or ""))
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
    from dicom_denoise_node.store.catalog import Catalog

    cat = Catalog(catalog)
    try:
        roles = make_split(cat, seed=seed, fractions=(1.0 - test - val, test, val), force=force)
    except ValueError as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from exc
    summary = split_summary(cat)
    cat.close()
    table = Table(title=f"split (seed {seed})")
    for col in ("role", "patients", "of them unpaired", "slices"):
        table.add_column(col)
    for role, ids in roles.items():
        row = summary.get(role, {})
        table.add_row(role, str(len(ids)), str(row.get("unpaired", 0)), str(row.get("slices", 0)))
    out.print(table)
    unpaired = {role: summary.get(role, {}).get("unpaired", 0) for role in ("train_ld", "train_hd")}
    if any(unpaired.values()):
        out.print(
            f"unpaired patients (no study with both LD and HD): {unpaired['train_ld']} train the LD side, "
            f"{unpaired['train_hd']} the HD side; they serve unpaired training (the default), not `--pairing paired`"
        )
    _print_held_out(roles, summary.get("val", {}), test, val)


def _print_held_out(roles: dict[str, list[str]], val_row: dict[str, int], test: float, val: float) -> None:
    """What test and val hold when it is not pairs: a user reads here why best.pt is chosen without a reference,
    or not at all, before a training run says so."""
    if not roles["train_ld"]:  # a held-out archive: test and val are pairs, or the split refused
        return
    if val_row.get("unpaired"):
        held = [
            f"{val_row[kind]} {name}"
            for kind, name in (("ld_only", "LD-only"), ("hd_only", "HD-only"), ("separate", "LD and HD in two studies"))
            if val_row.get(kind)
        ]
        noun = "patient" if val_row["unpaired"] == 1 else "patients"
        out.print(f"val: {' and '.join(held)} {noun} (no pairs: checkpoints chosen without a reference)")
    elif not roles["val"] and val:
        out.print(
            "no validation patients (too few patients for --val): training chooses no checkpoint and writes no "
            "best.pt; raise --val"
        )
    if not roles["test"] and test:
        out.print(
            "no test patients: test needs an LD and an HD series in one study (pairs); "
            "score on a separate archive that has pairs"
        )
