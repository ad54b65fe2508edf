"""Training data from the archive catalog: which slices the split gives to training and validation, decoded to HU.

Why here and not in the command: the `train` command, scripts and benchmarks need the same slices with the same
description (it is exported with the model), so the choice of files is written once. Unpaired training takes the
LD and HD slices of disjoint training patients; paired training the LD/HD pairs of the same slices. Validation
always keeps pairs (and the noise-free REF where a synthetic archive has one).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from denoise_trainer.archive.split import SlicePair, paired_slices, training_files, training_pairs
from denoise_trainer.data.slices import TrainingData, load_slices
from dicom_denoise_node.config import ConfigError, redact_url
from dicom_denoise_node.store.catalog import Catalog

log = logging.getLogger(__name__)

PAIRINGS = ("unpaired", "paired")


def data_fingerprint(paths: list[Path]) -> str:
    """sha256 of the sorted file list: which files a model was trained on, recorded with it."""
    return hashlib.sha256("\n".join(sorted(str(p) for p in paths)).encode()).hexdigest()


@dataclass(frozen=True)
class TrainingFiles:
    """The split's training and validation files, before any pixel is read."""

    ld: list[Path]
    hd: list[Path]
    val: list[SlicePair]
    pairs: list[SlicePair] | None = None  # paired training: the LD/HD pairs ``ld`` and ``hd`` come from

    @property
    def slices(self) -> int:
        """How many files loading reads (LD, HD and up to three per validation pair), for a progress bar."""
        return len(self.ld) + len(self.hd) + 3 * len(self.val)


def training_selection(catalog_url: str, pairing: str = "unpaired") -> TrainingFiles:
    """The files the catalog's split gives to training; a ConfigError that says what to run when there is none."""
    cat = Catalog(catalog_url)
    try:
        pairs = None
        if pairing == "paired":  # LD and HD of the same slices of every training patient
            pairs = training_pairs(cat)
            ld, hd = [p.ld for p in pairs], [p.hd for p in pairs]
            patients = len({p.patient_id for p in pairs})
            log.info("paired training: %d LD/HD pairs of %d patients", len(pairs), patients)
        else:
            ld, hd = training_files(cat, "LD"), training_files(cat, "HD")
        val = paired_slices(cat, "val")
    except ValueError as exc:
        raise ConfigError(f"{exc} (run `denoise-node catalog scan` and `denoise-node catalog split` first)") from exc
    finally:
        cat.close()
    if not ld or not hd:
        raise ConfigError("the split has no LD or no HD training slices")
    return TrainingFiles(ld, hd, val, pairs)


def load_training_data(
    files: TrainingFiles, catalog_url: str, pairing: str = "unpaired", progress: Callable[[], None] | None = None
) -> TrainingData:
    """Decode the selected files; ``progress`` is called once per file read."""
    step = (lambda k, n: progress()) if progress else None
    ld, hd = load_slices(files.ld, step), load_slices(files.hd, step)
    val = files.val
    val_ld, val_hd = load_slices([p.ld for p in val], step), load_slices([p.hd for p in val], step)
    # REF (noise-free, synthetic archives) scores every checkpoint; real archives have none.
    with_ref = [p for p in val if p.ref is not None]
    val_ref = load_slices([p.ref for p in with_ref], step) if val and len(with_ref) == len(val) else []
    description = {
        "catalog": redact_url(catalog_url),  # exported with the model: never a password
        "pairing": pairing,
        "ld_slices": len(ld),
        "hd_slices": len(hd),
        "val_slices": len(val_ld),
        "ld_fingerprint": data_fingerprint(files.ld),
        "hd_fingerprint": data_fingerprint(files.hd),
    }
    return TrainingData(ld, hd, val_ld, val_hd, val_ref, description)


def assemble_training_data(
    catalog_url: str, pairing: str = "unpaired", progress: Callable[[], None] | None = None
) -> TrainingData:
    """The catalog's training split as `train` sees it: select the files, then decode them."""
    return load_training_data(training_selection(catalog_url, pairing), catalog_url, pairing, progress)
