"""Shared fixtures: a tiny random generator exported as a real model file, and the real DICOM peers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dicom_denoise_node.model.generator import GeneratorConfig, ResidualCNN, ResidualCNNConfig, ResnetGenerator
from dicom_denoise_node.model.registry import save_model
from tests.peers import (  # noqa: F401  (fixtures)
    catalog_url,
    dcmtk_pacs,
    orthanc_factory,
    orthanc_pacs,
    pki,
    postgres_server,
    postgres_url,
    storescp_factory,
)

TINY = GeneratorConfig(filters=8, blocks=2)


def export_tiny_model(directory: Path, version: str = "0.0.1-test", seed: int = 0) -> Path:
    """A randomly initialised (untrained) generator saved exactly as `model export` saves one."""
    torch.manual_seed(seed)
    gen = ResnetGenerator(TINY)
    info = save_model(gen, directory, "tiny-random", version, (-1024.0, 3071.0), training={"note": "untrained"})
    return info.weights_path.with_suffix(".json")


def export_two_layer_model(directory: Path) -> Path:
    """A 2-layer, 4-filter residual CNN (untrained): the node's whole path at 512² without the tiny ResNet's
    seconds per slice on a 2-core CI machine, for tests about receiving, queues and workers rather than the model."""
    torch.manual_seed(0)
    network = ResidualCNN(ResidualCNNConfig(filters=4, layers=2, dilations=(1, 1)))
    info = save_model(network, directory, "load-test", "0.0.1-test", (-1024.0, 1024.0), training={"note": "untrained"})
    return info.weights_path.with_suffix(".json")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def abdomen_patient(tmp_path_factory) -> tuple[Path, dict]:
    """One synthetic abdomen patient, two 512² slices (LD, HD, noise-free REF) and its lesion truth."""
    import json

    from denoise_trainer.archive.synth import synthesize_archive

    out = tmp_path_factory.mktemp("abdomen")
    (patient,) = synthesize_archive(out, patients=1, slices=2, size=512, seed=3, body_parts=("abdomen",), views=360)
    return patient.directory, json.loads((patient.directory / "truth.json").read_text())
