"""`model export` and `model list`: a checkpoint's generator into the node's registry, and what a registry holds."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from denoise_trainer.cli.terminal import console, out

model_app = typer.Typer(help="Export and list models (safetensors + JSON metadata).", no_args_is_help=True)


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
    target_noise_hu: Annotated[
        float, typer.Option(help="Noise (HU) the model is meant to leave at any dose; 0 = none (full strength).")
    ] = 0.0,
    force: Annotated[
        bool, typer.Option(help="Replace NAME of this --version even when its weights differ (refused otherwise).")
    ] = False,
) -> None:
    """Export the LD→HD generator of a checkpoint as the node's model (safetensors + metadata).

    Files are 0644 (directories it creates 0755), for the service user. Exporting again with the same weights (to
    embed --evaluation) is fine; the same --version with other weights is refused unless --force: the version is
    part of the derived series' UIDs.

    Example: `denoise-node model export runs/cpu/checkpoints/last.pt --name cyclegan-ld2hd --version 1.0.0`
    """
    from denoise_trainer.export import export_checkpoint
    from dicom_denoise_node.model.registry import ModelError

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
            checkpoint,
            out_dir,
            name,
            version,
            figures,
            activate,
            shlex.join(sys.argv),
            self_ensemble,
            target_noise_hu,
            force,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--self-ensemble/--target-noise-hu") from exc
    except ModelError as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from exc
    out.print(f"exported {info.label} → {info.weights_path} (sha256 {info.sha256[:16]}…)")


def _architecture(arch: dict[str, object]) -> str:
    if arch.get("type") == "residual_cnn":
        return f"residual CNN {arch.get('filters')}f/{arch.get('layers')}l"
    if arch.get("type") == "residual_unet":
        return f"residual U-Net {arch.get('filters')}f"
    return f"ResNet {arch.get('filters')}f/{arch.get('blocks')}b"


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
    columns = ("name", "version", "architecture", "training", "HU window", "steps", "self-ensemble", "noise target")
    columns += ("sha256", "active")
    for col in columns:
        table.add_column(col)
    for m in list_models(directory):
        pairing = m.training.get("config", {}).get("pairing", "unpaired")
        table.add_row(
            m.name,
            m.version,
            _architecture(m.architecture),
            pairing,
            f"{m.hu_min:g}…{m.hu_max:g}",
            str(m.training.get("steps", "")),
            f"× {m.self_ensemble}" if m.self_ensemble > 1 else "off",
            f"{m.target_noise_hu:g} HU" if m.target_noise_hu else "none",
            m.sha256[:12],
            "yes" if m.name == active else "",
        )
    out.print(table)
