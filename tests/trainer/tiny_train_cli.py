"""`denoise-node train` as a user runs it, on tiny simulated slices instead of a catalog's (no archive to build).

``fake_catalog`` replaces the catalog's slice selection and decoding; run as a module (``python -m
tests.trainer.tiny_train_cli ARGS...``) it is the command in a process of its own, which a test can signal.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import denoise_trainer.data.assembly as assembly
from tests.trainer.golden_runs import tiny_data

SIZE = 128  # the inserted validation lesions need 64² patches inside soft tissue


def fake_catalog(setattr_: Any = setattr, size: int = SIZE) -> None:
    """Every catalog reads as the same tiny LD/HD/REF slices (``setattr_``: pytest's monkeypatch.setattr)."""
    data = tiny_data(size=size)
    setattr_(assembly, "training_selection", lambda url, pairing="unpaired": SimpleNamespace(pairs=None, slices=0))
    setattr_(assembly, "load_training_data", lambda files, url, pairing="unpaired", progress=None: data)


if __name__ == "__main__":
    fake_catalog()
    from dicom_denoise_node.cli import app

    app(["train", "--catalog", "sqlite:///tiny", *sys.argv[1:]], prog_name="denoise-node")
