"""Training data from the archive catalog: which slices the split gives to training and validation, decoded to HU.

Why here and not in the command: the `train` command, scripts and benchmarks need the same slices with the same
description (it is exported with the model), so the choice of files is written once. Unpaired training takes the
LD and HD slices of disjoint training patients; paired training the LD/HD pairs of the same slices. Validation
keeps pairs (and the noise-free REF where a synthetic archive has one); without any pair, the slices of validation
patients with one dose (train/selection.py chooses the checkpoint with what there is).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from denoise_trainer.archive.scan import ORIGIN
from denoise_trainer.archive.split import SlicePair, paired_slices, training_files, training_pairs
from denoise_trainer.data.slices import TrainingData, load_slices
from dicom_denoise_node.config import ConfigError, redact_url
from dicom_denoise_node.store.catalog import Catalog, Instance, Patient, Series, Split, Study

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
    val_ld_unpaired: list[Path] = field(default_factory=list)  # without validation pairs: one-dose val patients
    val_hd_unpaired: list[Path] = field(default_factory=list)

    @property
    def slices(self) -> int:
        """How many files loading reads (LD, HD, up to three per validation pair, the unpaired validation slices),
        for a progress bar."""
        unpaired = len(self.val_ld_unpaired) + len(self.val_hd_unpaired)
        return len(self.ld) + len(self.hd) + 3 * len(self.val) + unpaired


def unpaired_validation_files(catalog: Catalog) -> tuple[list[Path], list[Path]]:
    """(LD, HD) instance paths of the validation patients, for a split whose validation patients hold no pair: the
    no-reference criterion scores the LD and takes the site's HD level from the HD."""
    with catalog.db.session() as s:
        rows = s.execute(
            select(Series.domain, Instance.path)
            .join(Series, Instance.series_fk == Series.id)
            .join(Study, Series.study_fk == Study.id)
            .join(Split, Split.patient_fk == Study.patient_fk)
            .join(Patient, Patient.id == Study.patient_fk)
            .where(Series.origin == ORIGIN, Series.domain.in_(("LD", "HD")), Split.role == "val")
            .order_by(Patient.patient_id, Series.series_uid, Instance.instance_number, Instance.sop_uid)
        ).all()
    return [Path(p) for d, p in rows if d == "LD"], [Path(p) for d, p in rows if d == "HD"]


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
        val_unpaired = ([], []) if val else unpaired_validation_files(cat)
    except ValueError as exc:
        raise ConfigError(f"{exc} (run `denoise-node catalog scan` and `denoise-node catalog split` first)") from exc
    finally:
        cat.close()
    if not ld or not hd:
        raise ConfigError("the split has no LD or no HD training slices")
    return TrainingFiles(ld, hd, val, pairs, *val_unpaired)


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
    unpaired = [load_slices(paths, step) for paths in (files.val_ld_unpaired, files.val_hd_unpaired)]
    description = {
        "catalog": redact_url(catalog_url),  # exported with the model: never a password
        "pairing": pairing,
        "ld_slices": len(ld),
        "hd_slices": len(hd),
        "val_slices": len(val_ld),
        "ld_fingerprint": data_fingerprint(files.ld),
        "hd_fingerprint": data_fingerprint(files.hd),
    }
    if files.val_ld_unpaired:
        description["val_ld_unpaired_slices"] = len(files.val_ld_unpaired)
    return TrainingData(ld, hd, val_ld, val_hd, val_ref, description, *unpaired)


def assemble_training_data(
    catalog_url: str, pairing: str = "unpaired", progress: Callable[[], None] | None = None
) -> TrainingData:
    """The catalog's training split as `train` sees it: select the files, then decode them."""
    return load_training_data(training_selection(catalog_url, pairing), catalog_url, pairing, progress)
