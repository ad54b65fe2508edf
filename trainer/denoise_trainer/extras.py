"""The trainer's optional dependencies (`pip install 'dicom-denoise-node[train]'`), and a clear line when they are
missing instead of a traceback: a node-only host has the node's packages and not these."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

# Top-level import names of the `train` extra in pyproject.toml (pillow too is listed there, but highdicom, a node
# dependency, installs it anyway).
TRAIN_EXTRA_MODULES = frozenset({"pytorch_msssim", "torchmetrics", "tensorboard", "skimage", "pywt"})

F = TypeVar("F", bound=Callable[..., Any])
_err = Console(stderr=True)


def missing_extra_hint(exc: ModuleNotFoundError, command: str) -> str | None:
    """The one line to print when ``exc`` is a missing module of the train extra, else None (a real bug)."""
    name = (exc.name or "").split(".")[0]
    if name not in TRAIN_EXTRA_MODULES:
        return None
    return (
        f"denoise-node {command} needs the trainer's extra ({name} is not installed): "
        "pip install 'dicom-denoise-node[train]'"
    )


def needs_train_extra(command: F) -> F:
    """Wrap a typer command so that a missing module of the train extra ends in one line and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ModuleNotFoundError as exc:
            hint = missing_extra_hint(exc, command.__name__.replace("_", " "))
            if hint is None:
                raise
            _err.print(hint, markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from exc

    return wrapper  # type: ignore[return-value]
