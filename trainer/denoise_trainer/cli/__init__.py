"""The physicist's commands: synth, catalog scan/list/split, train, evaluate, model export/list.

Registered into `denoise-node` through the ``denoise_node.commands`` entry point, so the node package never imports
the trainer (the node runs where the trainer is not installed). Each command parses its options and calls a
workflow function of the trainer; one module per command group.
"""

from __future__ import annotations

import typer

from denoise_trainer.cli.archive import catalog_app, synth
from denoise_trainer.cli.evaluate import evaluate
from denoise_trainer.cli.model import model_app
from denoise_trainer.cli.train import train


def register(app: typer.Typer) -> None:
    """Entry point: add the trainer's commands to `denoise-node`."""
    app.command()(synth)
    app.command()(train)
    app.command()(evaluate)
    app.add_typer(catalog_app, name="catalog")
    app.add_typer(model_app, name="model")
