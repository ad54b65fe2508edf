"""Self-ensemble (denoise/ensemble.py): the inverse of each flip/turn is right, the node resolves the setting from
the model's metadata, and the derived series, its UIDs and the SR report say what was run."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom import dcmread
from torch import nn

from dicom_denoise_node.config import DeriveSettings, GuardSettings, ModelSettings, ReportSettings
from dicom_denoise_node.denoise.derive import DerivationInfo, derivation_key, derived_series_uid
from dicom_denoise_node.denoise.ensemble import SelfEnsemble, with_self_ensemble
from dicom_denoise_node.denoise.series import SeriesDenoiser
from dicom_denoise_node.denoise.worker import denoise_claim
from dicom_denoise_node.model.registry import load_model, read_metadata, save_model
from dicom_denoise_node.ops.metrics import NodeMetrics
from dicom_denoise_node.store.catalog import Catalog, InstanceMeta, SeriesState, utcnow
from dicom_denoise_node.store.spool import Spool
from tests.conftest import export_tiny_model


class _ShiftRight(nn.Module):
    """Not equivariant on purpose: moves the image one pixel right (wrapping)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, 1, dims=-1)


def _delta(h: int = 9, w: int = 9) -> torch.Tensor:
    x = torch.zeros(1, 1, h, w, dtype=torch.float64)
    x[..., 4, 4] = 1.0
    return x


def test_each_transform_is_undone_so_a_shift_averages_over_its_orientations():
    """A right shift seen through the flips is a right and a left shift (2 and 4 transforms); the quarter turns add
    up and down (8). A wrong inverse would move the mass elsewhere or leave it in one place."""
    two = SelfEnsemble(_ShiftRight(), 2)(_delta())[0, 0]
    assert two[4, 3] == two[4, 5] == 0.5 and two.sum() == 1.0
    four = SelfEnsemble(_ShiftRight(), 4)(_delta())[0, 0]
    torch.testing.assert_close(four, two)
    eight = SelfEnsemble(_ShiftRight(), 8)(_delta())[0, 0]
    assert eight[4, 3] == eight[4, 5] == eight[3, 4] == eight[5, 4] == 0.25 and eight.sum() == 1.0
    tall = SelfEnsemble(_ShiftRight(), 8)(_delta(9, 13))  # non-square: quarter turns change the shape and back
    assert tall.shape == (1, 1, 9, 13) and float(tall.sum()) == pytest.approx(1.0)


def test_one_transform_is_the_network_itself_and_only_1_2_4_8_are_accepted():
    net = _ShiftRight()
    assert with_self_ensemble(net, 1) is net
    x = torch.randint(0, 256, (2, 1, 16, 16)) / 256.0  # dyadic values: the sum of eight copies is exact
    assert torch.equal(with_self_ensemble(nn.Identity(), 8)(x), x)
    with pytest.raises(ValueError, match="choose one of 1, 2, 4, 8"):
        SelfEnsemble(net, 3)
    with pytest.raises(ValueError, match="self_ensemble=3"):
        ModelSettings(self_ensemble=3)


def test_the_model_metadata_sets_the_default_and_the_derived_series_records_it(abdomen_patient, tmp_path):
    """``[model] self_ensemble = 0`` takes the model's own setting (written by `model export --self-ensemble`);
    the setting is in DerivationDescription and the SR report, and a self-ensemble is another derived series."""
    directory, _ = abdomen_patient
    model = export_tiny_model(tmp_path / "tiny")
    plain = read_metadata(model)
    assert plain.self_ensemble == 1
    sources = sorted((directory / "LD").glob("*.dcm"))[:1]
    source_uid = str(dcmread(sources[0]).SeriesInstanceUID)
    network, _ = load_model(model)
    shifted = save_model(
        network,
        tmp_path / "ens",
        plain.name,
        plain.version,
        (plain.hu_min, plain.hu_max),
        inference={"self_ensemble": 2},
    )
    assert read_metadata(shifted.weights_path.with_suffix(".json")).self_ensemble == 2
    runs = {}
    for label, info, setting in (("own", shifted, 0), ("off", shifted, 1), ("plain", plain, 0)):
        denoiser = SeriesDenoiser(
            _ShiftRight(),
            info,
            ModelSettings(tile_size=128, tile_overlap=16, self_ensemble=setting),
            DeriveSettings(),
            guard=GuardSettings(enabled=False),
            report=ReportSettings(),
        )
        result = denoiser.denoise_series(source_uid, sources, lambda u, o, k=label: tmp_path / k / u / f"{o}.dcm")
        (image,) = [Path(p) for _, src, p in result.written if src]
        sr = dcmread(result.report_path)
        counts = [
            float(i.MeasuredValueSequence[0].NumericValue)
            for i in sr.ContentSequence[0].ContentSequence  # the summary
            if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == "SELFENS"
        ]
        runs[label] = (denoiser.self_ensemble, dcmread(image), result.derived_series_uid, counts)
    assert [runs[k][0] for k in ("own", "off", "plain")] == [2, 1, 1]
    assert "averaged over 2 flips/turns" in runs["own"][1].DerivationDescription
    assert "averaged" not in runs["off"][1].DerivationDescription
    assert runs["own"][3] == [2.0] and runs["off"][3] == [1.0]
    assert runs["off"][2] == runs["plain"][2] == derived_series_uid(source_uid, plain.version)  # earlier UIDs kept
    assert runs["own"][2] == derived_series_uid(source_uid, derivation_key(plain.version, 1.0, 2)) != runs["off"][2]
    own, off = (runs[k][1].pixel_array.astype(np.float64) for k in ("own", "off"))
    assert np.abs(own - off).max() > 10  # the wrapper ran: a right shift averaged with a left one is not a shift


def test_derivation_key_and_description_name_the_self_ensemble():
    assert derivation_key("1.3.0") == "1.3.0"
    assert derivation_key("1.3.0", 0.8, 8) == "1.3.0@strength=0.8@ensemble=8"
    assert derivation_key("1.3.0", 1.0, 4) == "1.3.0@ensemble=4"
    info = DerivationInfo("paired", "1.3.0", DeriveSettings(), 1.0, 8)
    assert info.uid_key == "1.3.0@ensemble=8" and "averaged over 8 flips/turns" in info.description


def test_the_worker_records_the_derivation_key_that_names_the_report(abdomen_patient, tmp_path):
    """The catalog's derivation_key (version plus self-ensemble), so `status` says how a series
    was made and the demo finds its report, whose UIDs come from that key; cut to the column's 64 characters."""
    directory, _ = abdomen_patient
    source = sorted((directory / "LD").glob("*.dcm"))[0]
    ds = dcmread(source, stop_before_pixels=True)
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    meta = InstanceMeta(
        "P", str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), str(ds.SOPClassUID),
        "1.2.840.10008.1.2.1", "CT", "LD", 1, str(source), source.stat().st_size,
    )  # fmt: skip
    catalog.intake.record_instance(meta)
    catalog.completion.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))
    model = export_tiny_model(tmp_path / "tiny", version="1.0." + "9" * 54)  # a long version: the key is cut
    _, info = load_model(model)
    denoiser = SeriesDenoiser(
        _ShiftRight(), info, ModelSettings(tile_size=128, tile_overlap=16, self_ensemble=2), DeriveSettings(),
        guard=GuardSettings(enabled=False), report=ReportSettings(enabled=False),
    )  # fmt: skip
    claim = catalog.queue.claim_for_processing()
    assert claim is not None
    spool = Spool(tmp_path / "spool")
    metrics = NodeMetrics(catalog, lambda: 1.0)
    assert denoise_claim(claim, catalog, [denoiser], spool, metrics, GuardSettings(), threading.Event(), 60.0)
    progress = catalog.views.series_progress(str(ds.SeriesInstanceUID))
    assert progress is not None and progress["state"] == SeriesState.DERIVED
    key = derivation_key(info.version, 1.0, 2)
    assert len(key) > 64 and progress["derivation_key"] == key[:64]
    assert progress["derived_series_uid"] == derived_series_uid(str(ds.SeriesInstanceUID), key)
