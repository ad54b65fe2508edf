"""Patient-level split of the archive into train_ld, train_hd, test and val, stored in the catalog.

Why patient level: slices of one patient are nearly identical, so a slice-level split leaks test anatomy into
training. Why two training halves: the method trains unpaired, LD images only from train_ld patients and HD
images only from train_hd patients, so the networks never see both doses of one patient; test and val keep
their LD/HD pairs for full-reference metrics. The split is stratified by body part, a deterministic function
of the seed and the eligible patients, and stored in the ``splits`` table so every later step (training,
evaluation, `catalog list`) reads the same assignment.

Eligible patients have a study holding both an LD and an HD archive series (any of them may land in test,
where the pair is needed).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

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


def _apportion(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
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


def _assign(strata: dict[str, list[str]], seed: int, fractions: tuple[float, float, float]) -> dict[str, str]:
    """patient_id → role, the same for the same seed and patients.

    Each body part's patients are shuffled and spread evenly over [0, 1); cutting the merged order into
    train | test | val gives every role about its fraction of every body part, with exact global counts.
    """
    rng = np.random.default_rng(seed)
    order: list[tuple[float, float, str, str]] = []
    shuffled: dict[str, list[str]] = {}
    for part in sorted(strata):
        ids = sorted(strata[part])
        shuffled[part] = [ids[i] for i in rng.permutation(len(ids))]
        ties = rng.random(len(ids))
        order += [((i + 0.5) / len(ids), ties[i], part, pid) for i, pid in enumerate(shuffled[part])]
    order.sort()
    n_train, n_test, _ = _apportion(len(order), fractions)
    roles: dict[str, str] = {}
    for rank, (_, _, _, pid) in enumerate(order):
        roles[pid] = "train" if rank < n_train else "test" if rank < n_train + n_test else "val"
    # Training halves alternate within each body part, the odd one out going to the smaller half so far.
    sizes = {"train_ld": 0, "train_hd": 0}
    for part in sorted(shuffled):
        train = [pid for pid in shuffled[part] if roles[pid] == "train"]
        first = "train_ld" if sizes["train_ld"] <= sizes["train_hd"] else "train_hd"
        second = "train_hd" if first == "train_ld" else "train_ld"
        for i, pid in enumerate(train):
            roles[pid] = first if i % 2 == 0 else second
            sizes[roles[pid]] += 1
    return roles


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


def _eligible(s: Session) -> dict[str, str]:
    """patient_id → body part, for patients with a study that holds both an LD and an HD archive series."""
    rows = s.execute(
        select(Patient.patient_id, Study.study_uid, Series.domain)
        .join(Study, Study.patient_fk == Patient.id)
        .join(Series, Series.study_fk == Study.id)
        .where(Series.origin == ORIGIN, Series.domain.in_(("LD", "HD")))
    ).all()
    domains: dict[tuple[str, str], set[str]] = defaultdict(set)
    for pid, study, domain in rows:
        domains[(pid, study)].add(domain)
    paired = {pid for (pid, _), d in domains.items() if d == {"LD", "HD"}}
    unpaired = {pid for pid, _ in domains} - paired
    if unpaired:
        log.info("split: %d patients without an LD/HD study are not eligible: %s", len(unpaired), sorted(unpaired))
    parts = _patient_body_parts(s)
    return {pid: parts[pid] for pid in sorted(paired)}


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
        eligible = _eligible(s)
        strata: dict[str, list[str]] = defaultdict(list)
        for pid, part in eligible.items():
            strata[part].append(pid)
        roles = _assign(strata, seed, fractions)
        stored = _stored(s)
        if stored and not force:
            seeds = sorted({sd for _, sd in stored.values()})
            if seeds != [seed]:
                raise ValueError(
                    f"the catalog holds a split with seed {seeds}, not {seed}; pass force=True to replace it"
                )
            if set(stored) != set(eligible):
                added, gone = sorted(set(eligible) - set(stored)), sorted(set(stored) - set(eligible))
                raise ValueError(
                    f"eligible patients changed since the split (new {added}, no longer eligible {gone}); "
                    "pass force=True to re-split"
                )
            kept = {pid: role for pid, (role, _) in stored.items()}
            if kept != roles:
                log.warning("split: the stored split (seed %d) differs from these fractions %s; kept", seed, fractions)
            log.info("split: kept the existing split, seed %d", seed)
            return _by_role(kept)
        if stored:
            log.warning("split: replacing the existing split (%d patients) with seed %d", len(stored), seed)
            s.execute(delete(Split))
        pks = dict(s.execute(select(Patient.patient_id, Patient.id).where(Patient.patient_id.in_(list(roles)))).all())
        s.add_all(Split(patient_fk=pks[pid], role=role, seed=seed) for pid, role in sorted(roles.items()))
    result = _by_role(roles)
    log.info("split seed %d: %s", seed, {role: len(ids) for role, ids in result.items()})
    return result


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


def training_pairs(catalog: Catalog, check_positions: bool = True) -> list[SlicePair]:
    """LD/HD pairs of the training patients (both halves): same patient and study, same frame of reference, same
    slice position. For `train --pairing paired`; test and val patients are never among them."""
    return [p for role in TRAIN_ROLE.values() for p in paired_slices(catalog, role, check_positions)]


def split_summary(catalog: Catalog) -> dict[str, dict[str, int]]:
    """role → {"patients", "slices", "patients_<BODY PART>", "slices_<BODY PART>"}; {} without a split.

    Slices count the images a role contributes: LD for train_ld, HD for train_hd, and the LD side of the
    pairs (before matching) for test and val.
    """
    with catalog.db.session() as s:
        stored = _stored(s)
        if not stored:
            return {}
        body_parts = _patient_body_parts(s)
        rows = s.execute(
            select(Patient.patient_id, Series.domain, func.count(Instance.id))
            .join(Study, Study.patient_fk == Patient.id)
            .join(Series, Series.study_fk == Study.id)
            .join(Instance, Instance.series_fk == Series.id)
            .where(Series.origin == ORIGIN, Series.domain.in_(("LD", "HD")))
            .group_by(Patient.patient_id, Series.domain)
        ).all()
    slices = {(pid, domain): n for pid, domain, n in rows}
    summary: dict[str, dict[str, int]] = {role: {"patients": 0, "slices": 0} for role in ROLES}
    for pid, (role, _) in sorted(stored.items()):
        part = body_parts.get(pid, UNKNOWN_BODY_PART)
        n = slices.get((pid, "HD" if role == "train_hd" else "LD"), 0)
        row = summary.setdefault(role, {"patients": 0, "slices": 0})
        for key, value in (("patients", 1), ("slices", n), (f"patients_{part}", 1), (f"slices_{part}", n)):
            row[key] = row.get(key, 0) + value
    return summary
