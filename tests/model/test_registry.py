import json
import os

import numpy as np
import pytest
import torch

from dicom_denoise_node.model.generator import ResnetGenerator
from dicom_denoise_node.model.registry import (
    ModelError,
    list_models,
    load_model,
    read_metadata,
    resolve_model_path,
    save_model,
)
from tests.conftest import TINY, export_tiny_model


def test_round_trip_without_pickle(tmp_path):
    meta_path = export_tiny_model(tmp_path)
    net, info = load_model(meta_path)
    assert info.name == "tiny-random" and info.version == "0.0.1-test"
    assert info.architecture["filters"] == 8 and info.architecture["blocks"] == 2
    assert len(info.sha256) == 64
    with torch.inference_mode():
        y = net(torch.zeros(1, 1, 32, 32))
    assert y.shape == (1, 1, 32, 32)
    # The weights file is safetensors (a JSON header then raw tensors), not a pickle.
    raw = info.weights_path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8 : 8 + header_len])
    # Same model through the .safetensors path and through the directory.
    assert read_metadata(info.weights_path).sha256 == info.sha256
    assert read_metadata(tmp_path).sha256 == info.sha256


def test_corrupt_weights_are_refused(tmp_path):
    meta_path = export_tiny_model(tmp_path)
    weights = meta_path.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum"):
        load_model(meta_path)


def test_architecture_mismatch_is_refused(tmp_path):
    meta_path = export_tiny_model(tmp_path)
    meta = json.loads(meta_path.read_text())
    meta["architecture"]["filters"] = 16
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="architecture"):
        load_model(meta_path)


def test_registry_directory_needs_active_when_several(tmp_path):
    export_tiny_model(tmp_path, version="1")
    other = export_tiny_model(tmp_path / "b", version="2")
    for f in other.parent.iterdir():
        f.rename(tmp_path / f.name.replace("tiny-random", "second"))
    meta = json.loads((tmp_path / "second.json").read_text())
    meta["name"] = "second"
    (tmp_path / "second.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="ACTIVE"):
        read_metadata(tmp_path)
    (tmp_path / "ACTIVE").write_text("second\n")
    assert read_metadata(tmp_path).version == "2"
    assert {m.name for m in list_models(tmp_path)} == {"tiny-random", "second"}


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model_path(str(tmp_path / "nope.json"))


def test_normalisation_round_trip(tmp_path):
    info = read_metadata(export_tiny_model(tmp_path))
    hu = np.array([-1024, -1000, 0, 40, 3071], dtype=np.float32)
    x = info.normalize(hu)
    assert x.min() == -1 and x.max() == 1
    np.testing.assert_allclose(info.denormalize(x), hu, atol=1e-3)


def test_no_model_and_no_bundled_model_refuses(tmp_path, monkeypatch):
    import dicom_denoise_node.model.registry as registry

    monkeypatch.setattr(registry, "BUNDLED_DIR", tmp_path / "empty")
    with pytest.raises(ModelError, match="never passes images through"):
        resolve_model_path("")


def test_model_name_picks_a_model_of_the_registry(tmp_path):
    """[model] name: one model of a registry directory by name, whatever ACTIVE says; a wrong name lists the others."""
    from dicom_denoise_node.model.generator import ResnetGenerator
    from dicom_denoise_node.model.registry import BUNDLED_DIR, save_model
    from tests.conftest import TINY

    for name in ("first", "second"):
        save_model(ResnetGenerator(TINY), tmp_path, name, "1.0", (-1024.0, 3071.0), activate=name == "first")
    assert resolve_model_path(str(tmp_path), "second") == tmp_path / "second.json"
    assert read_metadata(resolve_model_path(str(tmp_path))).name == "first"  # no name: the ACTIVE one
    with pytest.raises(ModelError, match="models there: first, second"):
        resolve_model_path(str(tmp_path), "third")
    with pytest.raises(ModelError, match="registry directory"):
        resolve_model_path(str(tmp_path / "first.json"), "first")
    bundled = {p.stem for p in BUNDLED_DIR.glob("*.json")}
    for name in bundled:
        assert resolve_model_path("", name) == BUNDLED_DIR / f"{name}.json"


def test_exported_files_are_readable_by_the_service_user_whatever_the_umask(tmp_path):
    """Model files 0644 and the directories the export creates 0755: the node runs as another user (was 0600)."""
    old = os.umask(0o077)
    try:
        meta_path = export_tiny_model(tmp_path / "registry" / "site")
        save_model(ResnetGenerator(TINY), meta_path.parent, "second", "0.0.1", (-1024.0, 3071.0), activate=True)
    finally:
        os.umask(old)
    for written in (meta_path, meta_path.with_suffix(".safetensors"), meta_path.parent / "ACTIVE"):
        assert written.stat().st_mode & 0o777 == 0o644, written
    for directory in (tmp_path / "registry", tmp_path / "registry" / "site"):
        assert directory.stat().st_mode & 0o777 == 0o755, directory


def test_a_version_is_not_overwritten_with_other_weights(tmp_path):
    """Same name and version, other weights: refused (the version is in the derived UIDs) and nothing changes;
    ``force`` replaces; the same weights again keep their file and checksum; a new version replaces freely."""
    first = read_metadata(export_tiny_model(tmp_path, version="1.0.0", seed=0))
    weights, inode = first.weights_path.read_bytes(), first.weights_path.stat().st_ino
    assert read_metadata(export_tiny_model(tmp_path, version="1.0.0", seed=0)).sha256 == first.sha256
    assert first.weights_path.read_bytes() == weights and first.weights_path.stat().st_ino == inode  # not rewritten
    with pytest.raises(ModelError, match="other weights.*--force"):
        export_tiny_model(tmp_path, version="1.0.0", seed=1)
    assert first.weights_path.read_bytes() == weights and read_metadata(tmp_path).sha256 == first.sha256
    assert not list(tmp_path.glob(".*.tmp"))
    torch.manual_seed(1)
    forced = save_model(ResnetGenerator(TINY), tmp_path, "tiny-random", "1.0.0", (-1024.0, 3071.0), force=True)
    assert forced.sha256 != first.sha256 and load_model(tmp_path)[1].sha256 == forced.sha256
    newer = read_metadata(export_tiny_model(tmp_path, version="1.1.0", seed=2))
    assert newer.version == "1.1.0" and newer.sha256 not in (first.sha256, forced.sha256)
