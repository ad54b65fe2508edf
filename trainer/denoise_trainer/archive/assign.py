"""Who goes where in the patient-level split: roles from what each patient's studies hold, the seed and the
fractions, without the catalog (``archive/split.py`` reads and stores them).

Why categories: the unpaired method needs no pairs (LD images from some patients, HD images from others), so a
patient with only LD studies trains the LD side and one with only HD studies the HD side, while test and
validation score against the other dose of the same slices and so take only patients with an LD/HD study. Pairs
are used where they exist: paired patients fill test and val first (by the fractions of all patients), the rest
train, and they and the patients with LD and HD in separate studies even out the two training halves.

Why validation may take one-dose patients: without a validation patient the trainer chooses no checkpoint and
writes no best.pt, the file a site exports. When no pair is left for val (an unpaired archive, or pairs all needed
by test and the training halves), val takes its fraction from the one-dose patients: LD-only first, since the
no-reference criterion (train/no_reference.py) scores LD slices, then in turn HD-only ones, which give the site's
HD level (the training HD otherwise). Test never does: it scores against the other dose of the same slices. Val
mixes no pairs with one-dose patients, since the trainer uses the one-dose ones only when val holds no pair.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

TRAIN_HALVES = ("train_ld", "train_hd")


@dataclass(frozen=True)
class Patients:
    """The archive's patients by what their studies hold; each maps patient_id → body part."""

    paired: dict[str, str]  # a study with both an LD and an HD series: test, val or either training half
    ld_only: dict[str, str]  # train_ld, or val when no pair is left for it
    hd_only: dict[str, str]  # train_hd, or val (beside LD-only ones) when no pair is left for it
    separate: dict[str, str]  # LD and HD, never in one study: either training half or val as ld_only, never test

    @property
    def unpaired(self) -> dict[str, str]:
        return {**self.ld_only, **self.hd_only, **self.separate}

    def allowed(self, pid: str) -> tuple[str, ...]:
        """The roles a patient can take."""
        if pid in self.paired:
            return ("train_ld", "train_hd", "test", "val")
        if pid in self.separate:
            return (*TRAIN_HALVES, "val")
        return ("train_ld", "val") if pid in self.ld_only else ("train_hd", "val") if pid in self.hd_only else ()


def apportion(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Train/test/val counts by largest remainder; test ≥ 1 from 3 patients on, train ≥ 2 (both halves non-empty).

    A train fraction of 0 makes a held-out archive (all test and val), e.g. a fresh test archive.
    """
    if fractions[0] == 0:
        val = round(n * fractions[2])
        return 0, n - val, val
    if n < 2:
        raise ValueError(f"{n} eligible patient(s): a split needs at least 2 (one for train_ld, one for train_hd)")
    quotas = [n * f for f in fractions]
    counts = [int(q) for q in quotas]
    by_remainder = sorted(range(3), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    train, test, val = counts
    if n >= 3 and fractions[1] > 0 and test == 0:
        test = 1
        if val > 0:
            val -= 1
        else:
            train -= 1
    while train < 2:
        if val > 0:
            val -= 1
        elif test > (1 if n >= 3 and fractions[1] > 0 else 0):
            test -= 1
        else:
            break
        train += 1
    return train, test, val


def _counts(patients: Patients, fractions: tuple[float, float, float]) -> tuple[int, int, int, int]:
    """(paired patients that train, test, val, val asked for). Without unpaired patients exactly ``apportion`` of
    the pairs; with them, test and val take their fractions of all patients, as far as there are pairs to give."""
    n_paired = len(patients.paired)
    if not patients.unpaired or fractions[0] == 0:
        return (*apportion(n_paired, fractions), 0)
    _, asked_test, asked_val = apportion(n_paired + len(patients.unpaired), fractions)
    test, val = asked_test, asked_val
    empty_halves = (not patients.ld_only) + (not patients.hd_only)
    room = max(0, n_paired - max(0, empty_halves - len(patients.separate)))  # pairs a training half needs
    while test + val > room:
        if val > 0:
            val -= 1
        else:
            test -= 1
    if (test, val) != (asked_test, asked_val):
        log.warning(
            "split: %d test and %d val patients asked for, but %d patients have LD/HD pairs to spare: %d test, %d val "
            "pairs%s",
            asked_test,
            asked_val,
            room,
            test,
            val,
            "; val takes one-dose patients instead" if asked_val and not val else "",
        )
    return n_paired - test - val, test, val, asked_val


def _spread(ids: dict[str, str], rng: np.random.Generator) -> list[str]:
    """Patients shuffled within each body part, then taken in turns across the parts: the first few cover them."""
    parts: dict[str, list[str]] = {}
    for pid in sorted(ids):
        parts.setdefault(ids[pid], []).append(pid)
    queues = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(parts.items())]
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


def _one_dose_validation(patients: Patients, wanted: int, paired_training: int, seed: int) -> list[str]:
    """Up to ``wanted`` one-dose patients for val (module docstring): LD-only ones first (then LD and HD in separate
    studies), HD-only ones in turn once val has an LD patient; never one a training half needs to stay non-empty.

    A half stays non-empty while its own one-dose patients or the patients that may take either half (the paired
    ones that train, the separate ones) suffice: flexible ≥ (no LD-only left) + (no HD-only left).
    """
    rng = np.random.default_rng([seed, 2])
    queues = {
        "LD": _spread(patients.ld_only, rng) + _spread(patients.separate, rng),
        "HD": _spread(patients.hd_only, rng),
    }
    left = {
        "LD": len(patients.ld_only),
        "HD": len(patients.hd_only),
        "flexible": paired_training + len(patients.separate),
    }
    chosen: list[str] = []
    while len(chosen) < wanted:
        turn = ("HD", "LD") if chosen and len(chosen) % 2 else ("LD", "HD") if chosen else ("LD",)
        for dose in turn:
            if not queues[dose]:
                continue
            pool = "flexible" if queues[dose][0] in patients.separate else dose
            after = {**left, pool: left[pool] - 1}
            if after["flexible"] >= (after["LD"] == 0) + (after["HD"] == 0):
                chosen.append(queues[dose].pop(0))
                left = after
                break
        else:
            break
    if len(chosen) < wanted:
        log.warning(
            "split: val asked for %d patients but no pair is left for it; %d one-dose patients could be spared "
            "(an LD patient first, and both training halves keep one)",
            wanted,
            len(chosen),
        )
    return chosen


def assign_roles(patients: Patients, seed: int, fractions: tuple[float, float, float]) -> dict[str, str]:
    """patient_id → role, the same for the same seed and patients.

    Each body part's paired patients are shuffled and spread evenly over [0, 1); cutting the merged order into
    train | test | val gives every role about its fraction of every body part. When no pair is left for val, val
    takes its fraction from the one-dose patients (``_one_dose_validation``). Training patients that may take
    either half go, in that order, to the smaller half so far (train_ld on a tie), after the single-dose patients
    took theirs. A held-out archive (train fraction 0) leaves the unpaired patients out: they cannot be scored.
    """
    rng = np.random.default_rng(seed)
    order: list[tuple[float, float, str, str]] = []
    shuffled: dict[str, list[str]] = {}
    strata: dict[str, list[str]] = {}
    for pid, part in patients.paired.items():
        strata.setdefault(part, []).append(pid)
    for part in sorted(strata):
        ids = sorted(strata[part])
        shuffled[part] = [ids[i] for i in rng.permutation(len(ids))]
        ties = rng.random(len(ids))
        order += [((i + 0.5) / len(ids), ties[i], part, pid) for i, pid in enumerate(shuffled[part])]
    order.sort()
    n_train, n_test, n_val, val_asked = _counts(patients, fractions)
    roles: dict[str, str] = {}
    for rank, (_, _, _, pid) in enumerate(order):
        roles[pid] = "train" if rank < n_train else "test" if rank < n_train + n_test else "val"
    if fractions[0] == 0:
        if patients.unpaired:
            log.warning(
                "split: a held-out archive leaves out %d patients without an LD/HD study", len(patients.unpaired)
            )
        return roles
    roles.update(dict.fromkeys(patients.ld_only, "train_ld"))
    roles.update(dict.fromkeys(patients.hd_only, "train_hd"))
    if not n_val and val_asked:
        roles.update(dict.fromkeys(_one_dose_validation(patients, val_asked, n_train, seed), "val"))
    sizes = {half: sum(role == half for role in roles.values()) for half in TRAIN_HALVES}
    separate = sorted(pid for pid in patients.separate if pid not in roles)
    flexible = [pid for part in sorted(shuffled) for pid in shuffled[part] if roles[pid] == "train"]
    flexible += [separate[i] for i in np.random.default_rng([seed, 1]).permutation(len(separate))]
    for pid in flexible:
        roles[pid] = "train_ld" if sizes["train_ld"] <= sizes["train_hd"] else "train_hd"
        sizes[roles[pid]] += 1
    for half, dose in (("train_ld", "LD"), ("train_hd", "HD")):
        if roles and not sizes[half]:
            raise ValueError(
                f"no patient has an {dose} series to train on, so {half} would be empty; "
                "check the series' domains (`denoise-node catalog list`) and scan with --rules"
            )
    return roles
