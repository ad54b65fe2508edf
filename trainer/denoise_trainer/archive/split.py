"""Patient-level split of the archive into train_ld, train_hd, test and val, stored in the catalog.

Why patient level: slices of one patient are nearly identical, so a slice-level split leaks test anatomy into
training. Why two training halves: the method trains unpaired, LD images only from train_ld patients and HD
images only from train_hd patients, so the networks never see both doses of one patient; test and val keep
their LD/HD pairs for full-reference metrics. The split is stratified by body part, a deterministic function
of the seed and the eligible patients, and stored in the ``splits`` table so every later step (training,
evaluation, `catalog list`) reads the same assignment.

Every patient with an LD or HD series takes part: one with a study holding both (a pair) may land in any role;
one with only LD (only HD) trains the LD (HD) half; test needs pairs, and so does val while there are pairs to
give it; without, val takes one-dose patients and checkpoints are chosen without a reference
(``archive/assign.py`` says how).
Paired training (``training_pairs``) uses the pairs of the training patients and refuses an archive without any.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pydicom
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from denoise_trainer.archive.assign import Patients, assign_roles
from denoise_trainer.archive.scan import ORIGIN
from dicom_denoise_node.store.catalog import Catalog, Instance, Patient, Series, Split, Study

log = logging.getLogger(__name__)

ROLES = ("train_ld", "train_hd", "test", "val")
TRAIN_ROLE = {"LD": "train_ld", "HD": "train_hd"}
UNKNOWN_BODY_PART = "UNKNOWN"
Z_TOLERANCE_MM = 0.05  # LD and HD of one slice are reconstructed at the same position; DS rounding aside


@dataclass(frozen=True)
class SlicePair:
    """One test/val slice position: the LD and HD images of it, and the noise-free REF where there is one."""

    patient_id: str
    body_part: str
    ld: Path
    hd: Path
    ref: Path | None
    instance_number: int


def _patient_body_parts(s: Session) -> dict[str, str]:
    """Body part of each archive patient: the most common one of its LD/HD series."""
    rows = s.execute(
        select(Patient.patient_id, Series.body_part)
        .join(Study, Study.patient_fk == Patient.id)
        .join(Series, Series.study_fk == Study.id)
        .where(Series.origin == ORIGIN, Series.domain.in_(("LD", "HD")))
    ).all()
    parts: dict[str, Counter[str]] = defaultdict(Counter)
    for pid, part in rows:
        parts[pid][part or UNKNOWN_BODY_PART] += 1
    return {pid: min(c, key=lambda p: (-c[p], p)) for pid, c in parts.items()}


def _patients(s: Session) -> Patients:
    """The archive's patients with an LD or HD series, by what their studies hold (``archive/assign.py``); a series
    whose files are all gone (a re-scan removed its instances) holds nothing."""
    has_files = select(Instance.id).where(Instance.series_fk == Series.id).exists()
    rows = s.execute(
        select(Patient.patient_id, Study.study_uid, Series.domain)
        .join(Study, Study.patient_fk == Patient.id)
        .join(Series, Series.study_fk == Study.id)
        .where(Series.origin == ORIGIN, Series.domain.in_(("LD", "HD")), has_files)
    ).all()
    studies: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for pid, study, domain in rows:
        studies[pid][study].add(domain)
    parts = _patient_body_parts(s)
    groups: dict[str, dict[str, str]] = {"paired": {}, "ld_only": {}, "hd_only": {}, "separate": {}}
    for pid in sorted(studies):
        held = set().union(*studies[pid].values())
        if any(d == {"LD", "HD"} for d in studies[pid].values()):
            kind = "paired"
        else:
            kind = "separate" if held == {"LD", "HD"} else "ld_only" if held == {"LD"} else "hd_only"
        groups[kind][pid] = parts[pid]
    return Patients(**groups)


def _stored(s: Session) -> dict[str, tuple[str, int]]:
    rows = s.execute(select(Patient.patient_id, Split.role, Split.seed).join(Patient, Split.patient_fk == Patient.id))
    return {pid: (role, seed) for pid, role, seed in rows}


def _by_role(roles: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {role: [] for role in ROLES}
    for pid in sorted(roles):
        out[roles[pid]].append(pid)
    return out


def make_split(
    catalog: Catalog, seed: int = 0, fractions: tuple[float, float, float] = (0.80, 0.15, 0.05), force: bool = False
) -> dict[str, list[str]]:
    """Assign every eligible patient a role (train_ld, train_hd, test, val); returns role → sorted patient IDs.

    An existing split is returned unchanged when it has this seed and the same eligible patients. A split with
    another seed, or over other patients (a re-scan added some), raises ValueError unless force=True replaces
    it: moving patients between train and test silently would evaluate models on patients they trained on.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions (train, test, val) must be three non-negative numbers summing to 1: {fractions}")
    with catalog.db.transaction() as s:
        patients = _patients(s)
        roles = assign_roles(patients, seed, fractions)
        stored = _stored(s)
        if stored and not force:
            return _by_role(_kept(stored, roles, patients, seed, fractions))
        if stored:
            log.warning("split: replacing the existing split (%d patients) with seed %d", len(stored), seed)
            s.execute(delete(Split))
        pks = dict(s.execute(select(Patient.patient_id, Patient.id).where(Patient.patient_id.in_(list(roles)))).all())
        s.add_all(Split(patient_fk=pks[pid], role=role, seed=seed) for pid, role in sorted(roles.items()))
    result = _by_role(roles)
    unpaired = patients.unpaired
    log.info(
        "split seed %d: %s; unpaired patients (no study with LD and HD) %s",
        seed,
        {role: len(ids) for role, ids in result.items()},
        {role: sum(pid in unpaired for pid in ids) for role, ids in result.items() if role != "test"},
    )
    return result


def _kept(
    stored: dict[str, tuple[str, int]],
    roles: dict[str, str],
    patients: Patients,
    seed: int,
    fractions: tuple[float, float, float],
) -> dict[str, str]:
    """The stored split, when it has this seed, these patients and a role each can still take; else ValueError."""
    seeds = sorted({sd for _, sd in stored.values()})
    if seeds != [seed]:
        raise ValueError(f"the catalog holds a split with seed {seeds}, not {seed}; pass force=True to replace it")
    if set(stored) != set(roles):
        added, gone = sorted(set(roles) - set(stored)), sorted(set(stored) - set(roles))
        raise ValueError(
            f"eligible patients changed since the split (new {added}, no longer eligible {gone}); "
            "pass force=True to re-split"
        )
    kept = {pid: role for pid, (role, _) in stored.items()}
    misplaced = sorted(pid for pid, role in kept.items() if role not in patients.allowed(pid))
    if misplaced:
        raise ValueError(
            f"patients {misplaced} no longer hold the series their split role needs (a re-scan changed their "
            "domains); pass force=True to re-split"
        )
    if kept != roles:
        log.warning(
            "split: the stored split (seed %d) differs from the one these fractions %s give now; kept (--force "
            "re-splits)",
            seed,
            fractions,
        )
    log.info("split: kept the existing split, seed %d", seed)
    return kept


def _require_split(s: Session) -> None:
    if not s.scalar(select(func.count(Split.id))):
        raise ValueError("the catalog holds no split; run make_split (denoise-node catalog split) first")


def training_files(catalog: Catalog, domain: str) -> list[Path]:
    """Instance paths of the LD series of train_ld patients (domain "LD") or HD series of train_hd ones ("HD")."""
    domain = domain.upper()
    if domain not in TRAIN_ROLE:
        raise ValueError(f"training domain must be LD or HD, not {domain!r}")
    with catalog.db.session() as s:
        _require_split(s)
        paths = s.scalars(
            select(Instance.path)
            .join(Series, Instance.series_fk == Series.id)
            .join(Study, Series.study_fk == Study.id)
            .join(Split, Split.patient_fk == Study.patient_fk)
            .join(Patient, Patient.id == Study.patient_fk)
            .where(Series.origin == ORIGIN, Series.domain == domain, Split.role == TRAIN_ROLE[domain])
            .order_by(Patient.patient_id, Series.series_uid, Instance.instance_number, Instance.sop_uid)
        ).all()
    return [Path(p) for p in paths]


def _slice_place(path: Path) -> tuple[float | None, str | None]:
    """(z, FrameOfReferenceUID) of a slice: z from ImagePositionPatient, else SliceLocation (headers only)."""
    try:
        ds = pydicom.dcmread(
            path,
            stop_before_pixels=True,
            specific_tags=["ImagePositionPatient", "SliceLocation", "FrameOfReferenceUID"],
        )
        frame = str(ds.FrameOfReferenceUID) if ds.get("FrameOfReferenceUID") else None
        if ds.get("ImagePositionPatient"):
            return float(ds.ImagePositionPatient[2]), frame
        if ds.get("SliceLocation") not in (None, ""):
            return float(ds.SliceLocation), frame
        return None, frame
    except Exception as exc:  # an unreadable header only disables the check for this slice
        log.debug("no slice position in %s: %s", path, exc)
    return None, None


def _same_place(a: Path, b: Path) -> bool:
    """Same frame of reference (when both name one) and the same z within Z_TOLERANCE_MM (when both have one)."""
    (za, fa), (zb, fb) = _slice_place(a), _slice_place(b)
    if fa is not None and fb is not None and fa != fb:
        return False
    return za is None or zb is None or abs(za - zb) <= Z_TOLERANCE_MM


def _numbered(series_uid: str, rows: list[tuple[int | None, str]]) -> dict[int, Path]:
    """instance_number → path; numbers that repeat within a series are ambiguous and dropped."""
    counts = Counter(n for n, _ in rows if n is not None)
    repeated = sorted(n for n, c in counts.items() if c > 1)
    if repeated:
        log.warning("series %s repeats instance numbers %s; those slices are not paired", series_uid, repeated)
    return {n: Path(p) for n, p in rows if n is not None and counts[n] == 1}


def paired_slices(catalog: Catalog, role: str, check_positions: bool = True) -> list[SlicePair]:
    """LD/HD (and REF) slices of the test or val patients, matched by instance_number within each study.

    The catalog keeps no slice positions, so pairing relies on the series of one study sharing their instance
    numbering, as the synthetic archive and the usual LD/FD reconstructions do. check_positions reads the
    headers of the matched files and drops pairs whose z (ImagePositionPatient, else SliceLocation) differ by
    more than Z_TOLERANCE_MM. A study with several series of one domain uses the one with most instances.
    """
    if role not in ROLES:
        raise ValueError(f"unknown split role {role!r}; one of {', '.join(ROLES)}")
    with catalog.db.session() as s:
        _require_split(s)
        rows = s.execute(
            select(
                Patient.patient_id,
                Study.study_uid,
                Series.series_uid,
                Series.domain,
                Series.body_part,
                Instance.instance_number,
                Instance.path,
            )
            .join(Study, Study.patient_fk == Patient.id)
            .join(Series, Series.study_fk == Study.id)
            .join(Instance, Instance.series_fk == Series.id)
            .join(Split, Split.patient_fk == Patient.id)
            .where(Series.origin == ORIGIN, Series.domain.in_(("LD", "HD", "REF")), Split.role == role)
        ).all()
    studies: dict[tuple[str, str], dict[str, dict[str, list[tuple[int | None, str]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    parts: dict[str, str] = {}
    for pid, study, series_uid, domain, body_part, number, path in rows:
        studies[(pid, study)][domain][series_uid].append((number, path))
        if domain in ("LD", "HD"):
            parts.setdefault(series_uid, body_part or UNKNOWN_BODY_PART)
    pairs: list[SlicePair] = []
    mismatched = 0
    for (pid, study), by_domain in sorted(studies.items()):
        if "LD" not in by_domain or "HD" not in by_domain:
            continue
        chosen: dict[str, str] = {}
        for domain, series in by_domain.items():
            chosen[domain] = min(series, key=lambda uid, series=series: (-len(series[uid]), uid))
            if len(series) > 1:
                log.warning("study %s has %d %s series; pairing %s", study, len(series), domain, chosen[domain])
        ld, hd = (_numbered(chosen[d], by_domain[d][chosen[d]]) for d in ("LD", "HD"))
        ref = _numbered(chosen["REF"], by_domain["REF"][chosen["REF"]]) if "REF" in chosen else {}
        unmatched = set(ld) ^ set(hd)
        if unmatched:
            log.warning("study %s: %d LD/HD slices without a partner", study, len(unmatched))
        for n in sorted(set(ld) & set(hd)):
            ref_path = ref.get(n)
            if check_positions:
                if not _same_place(ld[n], hd[n]):
                    mismatched += 1
                    continue
                if ref_path is not None and not _same_place(ld[n], ref_path):
                    ref_path = None
            pairs.append(SlicePair(pid, parts[chosen["LD"]], ld[n], hd[n], ref_path, n))
    if mismatched:
        log.warning("%s: dropped %d LD/HD pairs whose frame of reference or slice position differ", role, mismatched)
    return pairs


class NoTrainingPairs(ValueError):
    """Paired training on a split whose training patients hold no LD/HD pairs."""


def training_pairs(catalog: Catalog, check_positions: bool = True) -> list[SlicePair]:
    """LD/HD pairs of the training patients (both halves): same patient and study, same frame of reference, same
    slice position. For `train --pairing paired`; test and val patients are never among them. NoTrainingPairs
    when there are none: paired training needs pairs, unpaired training does not."""
    pairs = [p for role in TRAIN_ROLE.values() for p in paired_slices(catalog, role, check_positions)]
    if not pairs:
        raise NoTrainingPairs(
            "no LD/HD pairs among the training patients: paired training needs patients with an LD and an HD series "
            "of the same slices in one study; train unpaired (`--pairing unpaired`) on this archive"
        )
    with catalog.db.session() as s:
        unpaired = _patients(s).unpaired
        left_out = sum(1 for pid, (role, _) in _stored(s).items() if pid in unpaired and role in TRAIN_ROLE.values())
    if left_out:
        log.info("paired training: %d unpaired training patients are left out (no LD/HD study)", left_out)
    return pairs


def split_summary(catalog: Catalog) -> dict[str, dict[str, int]]:
    """role → {"patients", "unpaired", "ld_only", "hd_only", "separate", "slices", "patients_<BODY PART>",
    "slices_<BODY PART>"}; {} without a split.

    Slices count the images a role contributes: LD for train_ld, HD for train_hd, and the LD side of the
    pairs (before matching) for test and val (val's LD slices where it holds one-dose patients). "unpaired"
    counts the patients without an LD/HD study, "ld_only", "hd_only" and "separate" them by what they hold: a val
    of one-dose patients means checkpoints chosen without a reference, which `catalog split` says.
    """
    with catalog.db.session() as s:
        stored = _stored(s)
        if not stored:
            return {}
        body_parts = _patient_body_parts(s)
        patients = _patients(s)
        unpaired = patients.unpaired
        rows = s.execute(
            select(Patient.patient_id, Series.domain, func.count(Instance.id))
            .join(Study, Study.patient_fk == Patient.id)
            .join(Series, Series.study_fk == Study.id)
            .join(Instance, Instance.series_fk == Series.id)
            .where(Series.origin == ORIGIN, Series.domain.in_(("LD", "HD")))
            .group_by(Patient.patient_id, Series.domain)
        ).all()
    slices = {(pid, domain): n for pid, domain, n in rows}
    kinds = ("ld_only", "hd_only", "separate")
    empty = dict.fromkeys(("patients", "unpaired", *kinds, "slices"), 0)
    summary: dict[str, dict[str, int]] = {role: dict(empty) for role in ROLES}
    for pid, (role, _) in sorted(stored.items()):
        part = body_parts.get(pid, UNKNOWN_BODY_PART)
        n = slices.get((pid, "HD" if role == "train_hd" else "LD"), 0)
        row = summary.setdefault(role, dict(empty))
        held = tuple((kind, int(pid in getattr(patients, kind))) for kind in kinds)
        counts = (("patients", 1), ("unpaired", int(pid in unpaired)), *held, ("slices", n))
        for key, value in (*counts, (f"patients_{part}", 1), (f"slices_{part}", n)):
            row[key] = row.get(key, 0) + value
    return summary
