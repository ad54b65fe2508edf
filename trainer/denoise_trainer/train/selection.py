"""Which criterion chooses best.pt, from what the validation patients have.

- every validation pair has the noise-free REF (the project's synthetic archives): the error against REF, as ever
  (train/validation.py ``ValidationSet``);
- LD/HD pairs without REF (a site's archive with both doses of its validation patients): the error against HD less
  HD's noise (train/hd_validation.py);
- no pairs (validation patients with one dose each): no-reference figures on their LD slices, against the site's HD
  level from the validation HD-only patients, else from the training HD patients (train/no_reference.py);
- no validation LD slice at all: none, with a warning: best.pt is not written.

The criterion is said in the log, stored in every checkpoint (``"selection"``) and copied into the exported model.
"""

from __future__ import annotations

import logging

from denoise_trainer.data.slices import TrainingData
from denoise_trainer.train.hd_validation import PairedHDSet
from denoise_trainer.train.no_reference import NoReferenceSet
from denoise_trainer.train.recipe import TrainConfig
from denoise_trainer.train.validation import ValidationCriterion, ValidationSet

log = logging.getLogger(__name__)


def validation_set(data: TrainingData, cfg: TrainConfig) -> ValidationCriterion | None:
    """The validation set of the best criterion the data allows (module docstring); None when there is none."""
    window, count, cond = (cfg.hu_min, cfg.hu_max), cfg.val_slices, cfg.noise_conditioning
    if data.val_ref:
        return ValidationSet.build(data.val_ld, data.val_hd, data.val_ref, window, count, cond)
    if data.val_ld and data.val_hd:
        return PairedHDSet.build(data.val_ld, data.val_hd, window, count, cond)
    if data.val_ld_unpaired:
        hd = data.val_hd_unpaired or data.hd
        try:
            return NoReferenceSet.build(data.val_ld_unpaired, hd, window, count, cond)
        except ValueError as exc:
            log.warning("no validation: %s; best.pt is not written, the run's last checkpoint is its result", exc)
            return None
    log.warning(
        "no validation LD slices (no validation patients with LD): no checkpoint is chosen, best.pt is not written; "
        "the run's last checkpoint is its result"
    )
    return None
