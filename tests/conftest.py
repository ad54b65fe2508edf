"""Shared fixtures: a tiny random generator exported as a real model file, and the real DICOM peers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dicom_denoise_node.model.generator import GeneratorConfig, ResnetGenerator
from dicom_denoise_node.model.registry import save_model
from tests.peers import dcmtk_pacs, orthanc_factory, orthanc_pacs, storescp_factory  # noqa: F401  (fixtures)

TINY = GeneratorConfig(filters=8, blocks=2)


def export_tiny_model(directory: Path, version: str = "0.0.1-test", seed: int = 0) -> Path:
    """A randomly initialised (untrained) generator saved exactly as `model export` saves one."""
    torch.manual_seed(seed)
    gen = ResnetGenerator(TINY)
    info = save_model(gen, directory, "tiny-random", version, (-1024.0, 3071.0), training={"note": "untrained"})
    return info.weights_path.with_suffix(".json")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def abdomen_patient(tmp_path_factory) -> tuple[Path, dict]:
    """One synthetic abdomen patient, two 512² slices (LD, HD, noise-free REF) and its lesion truth."""
    import json

    from trainer.synth import synthesize_archive

    out = tmp_path_factory.mktemp("abdomen")
    (patient,) = synthesize_archive(out, patients=1, slices=2, size=512, seed=3, body_parts=("abdomen",), views=360)
    return patient.directory, json.loads((patient.directory / "truth.json").read_text())
