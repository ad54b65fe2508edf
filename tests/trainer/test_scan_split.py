"""Catalog scan (domains, idempotence, skips) and the patient-level split, on a tiny synthetic archive."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from denoise_trainer.archive.assign import Patients, apportion, assign_roles
from denoise_trainer.archive.domain import DESCRIPTION, DomainRules, exposure_mas
from denoise_trainer.archive.scan import archive_overview, scan_archive
from denoise_trainer.archive.split import (
    ROLES,
    make_split,
    paired_slices,
    split_summary,
    training_files,
    training_pairs,
)
from denoise_trainer.archive.synth import PatientRecord, synthesize_archive
from dicom_denoise_node.store.catalog import (
    Catalog,
    Instance,
    InstanceMeta,
    Patient,
    Series,
    SeriesState,
    Split,
    Study,
    utcnow,
)

PATIENTS = 10  # 5 chest + 5 abdomen, ~3 s to synthesise at 64 px, 48 views
SLICES = 2


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[PatientRecord]]:
    out = tmp_path_factory.mktemp("archive")
    return out, synthesize_archive(out, patients=PATIENTS, slices=SLICES, size=64, seed=3, views=48)


def _catalog(path: Path) -> Catalog:
    return Catalog(f"sqlite:///{path}")


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    cat = _catalog(tmp_path / "catalog.sqlite")
    yield cat
    cat.close()


@pytest.fixture
def scanned(catalog: Catalog, archive: tuple[Path, list[PatientRecord]]) -> Catalog:
    scan_archive(catalog, archive[0])
    return catalog


def _counts(catalog: Catalog) -> dict[str, int]:
    with catalog.db.session() as s:
        return {
            m.__tablename__: s.scalar(select(func.count()).select_from(m)) for m in (Patient, Study, Series, Instance)
        }


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---- scan ------------------------------------------------------------------------------------------------------


def test_scan_indexes_every_series_with_its_domain(catalog: Catalog, archive) -> None:
    root, records = archive
    seen: list[tuple[int, int]] = []
    report = scan_archive(catalog, root, progress=lambda done, total: seen.append((done, total)))
    assert report.instances_added == PATIENTS * SLICES * 3 and report.instances_updated == 0
    assert report.series_by_domain == {"LD": PATIENTS, "HD": PATIENTS, "REF": PATIENTS}
    # the synthetic archive's names decide, as they did before dose-relative recognition
    assert report.recognised == {d: {DESCRIPTION: PATIENTS} for d in ("LD", "HD", "REF")}
    assert not report.unknown_series
    assert seen[-1] == (report.files_seen, report.files_seen)
    # truth.json per patient and archive.json are not DICOM
    assert len(report.skipped) == PATIENTS + 1
    assert all(reason.startswith("not DICOM") for reason in report.skipped.values())
    assert _counts(catalog) == {"patients": PATIENTS, "studies": PATIENTS, "series": 3 * PATIENTS, "instances": 60}

    parts = {r.patient_id: r.body_part.upper() for r in records}
    rows = archive_overview(catalog)
    assert len(rows) == 3 * PATIENTS
    for row in rows:
        assert f"({row['domain']})" in row["description"]
        assert row["body_part"] == parts[row["patient_id"]]
        assert row["instances"] == SLICES and row["split"] is None
    with catalog.db.session() as s:
        series = s.scalars(select(Series)).all()
        assert {(x.origin, x.state) for x in series} == {("archive", SeriesState.ARCHIVED)}
        assert {x.domain: x.exposure_mas for x in series} == {"HD": 200.0, "LD": 50.0, "REF": None}
        for inst in s.scalars(select(Instance)):
            path = Path(inst.path)
            assert path.is_absolute() and path.exists() and path.parent.name in ("HD", "LD", "REF")
            assert inst.instance_number in (1, 2)
            assert inst.sop_class_uid == pydicom.uid.CTImageStorage
            assert inst.transfer_syntax == pydicom.uid.ExplicitVRLittleEndian


def test_rescan_is_idempotent_and_follows_moved_or_deleted_files(catalog: Catalog, archive, tmp_path: Path) -> None:
    root = _copy(archive[0], tmp_path / "copy")
    scan_archive(catalog, root)
    before = _counts(catalog)
    again = scan_archive(catalog, root)
    assert (again.instances_added, again.instances_updated, again.instances_unchanged) == (0, 0, 60)
    assert _counts(catalog) == before

    patient = sorted(p for p in root.iterdir() if p.is_dir())[0]
    moved = patient / "LD" / "0001.dcm"
    moved.rename(patient / "LD" / "renamed.dcm")
    (patient / "HD" / "0002.dcm").unlink()
    third = scan_archive(catalog, root)
    assert (third.instances_added, third.instances_updated, third.instances_removed) == (0, 1, 1)
    with catalog.db.session() as s:
        paths = set(s.scalars(select(Instance.path)))
    assert str((patient / "LD" / "renamed.dcm").resolve()) in paths
    assert str(moved.resolve()) not in paths and str((patient / "HD" / "0002.dcm").resolve()) not in paths
    assert _counts(catalog)["instances"] == before["instances"] - 1


def test_explicit_domain_overrides_the_description(catalog: Catalog, archive) -> None:
    ref_dir = archive[1][0].directory / "REF"
    report = scan_archive(catalog, ref_dir, domain="hd")
    assert report.series_by_domain == {"HD": 1}
    assert [r["domain"] for r in archive_overview(catalog)] == ["HD"]
    scan_archive(catalog, ref_dir)  # the domain is re-derived on every scan
    assert [r["domain"] for r in archive_overview(catalog)] == ["REF"]
    with pytest.raises(ValueError, match="domain"):
        scan_archive(catalog, ref_dir, domain="XD")


def test_non_dicom_files_are_skipped_with_a_reason(catalog: Catalog, archive, tmp_path: Path) -> None:
    root = _copy(archive[1][0].directory / "LD", tmp_path / "ld")
    (root / "notes.txt").write_text("reconstructed on the console\n")
    (root / "looks_like_a_dataset").write_bytes(b"\x08\x00\x05\x00" + b"\xff" * 64)
    report = scan_archive(catalog, root)
    assert report.instances_added == SLICES
    assert set(report.skipped) == {root.resolve() / "notes.txt", root.resolve() / "looks_like_a_dataset"}
    assert report.skipped[root.resolve() / "notes.txt"] == "not DICOM (no DICM prefix)"
    assert report.skipped[root.resolve() / "looks_like_a_dataset"].startswith("not DICOM")


def _retitle(src: Path, dst: Path, description: str, drop: tuple[str, ...] = (), patient: str | None = None) -> None:
    ds = pydicom.dcmread(src)
    ds.SeriesDescription = description
    if patient is not None:
        ds.PatientID = patient
    for keyword in drop:
        delattr(ds, keyword)
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=True)


def test_exposure_thresholds_decide_when_the_description_says_nothing(archive, tmp_path: Path) -> None:
    patient = archive[1][0].directory
    root = tmp_path / "anon"
    # two patients, one series each: nothing relative to compare, only thresholds can decide
    _retitle(patient / "LD" / "0001.dcm", root / "a" / "1.dcm", "Axial 3mm B30f", drop=("CTDIvol",), patient="A")
    # without Exposure the mAs come from XRayTubeCurrent × ExposureTime: 400 mA × 500 ms = 200 mAs
    drop = ("Exposure", "CTDIvol")
    _retitle(patient / "HD" / "0001.dcm", root / "b" / "1.dcm", "Axial 3mm B30f", drop=drop, patient="B")
    assert exposure_mas(pydicom.dcmread(root / "b" / "1.dcm")) == pytest.approx(200.0)

    plain = _catalog(tmp_path / "plain.sqlite")
    report = scan_archive(plain, root)
    assert report.series_by_domain == {"unknown": 2} and len(report.unknown_series) == 2
    assert {r["domain"] for r in archive_overview(plain)} == {None}  # still indexed
    plain.close()

    rules = DomainRules(ld_max_mas=100, hd_min_mas=150)
    cat = _catalog(tmp_path / "rules.sqlite")
    assert scan_archive(cat, root, rules=rules).series_by_domain == {"LD": 1, "HD": 1}
    cat.close()
    with pytest.raises(ValueError, match="below"):
        DomainRules(ld_max_mas=150, hd_min_mas=100)


@pytest.mark.parametrize(
    ("description", "domain"),
    [
        ("Quarter dose (LD) 50 mAs", "LD"),
        ("Low Dose Images", "LD"),
        ("low-dose chest", "LD"),
        ("Full Dose Images", "HD"),
        ("Routine Abdomen 3.0 B30f", "HD"),
        ("Noise-free reference (REF) for evaluation only", "REF"),
        ("LD vs HD comparison", None),  # ambiguous: left to the exposure rule
        ("Axial 3mm", None),
        ("HEAD", None),  # a word containing "HD" letters is not HD
    ],
)
def test_default_description_patterns(description: str, domain: str | None) -> None:
    assert DomainRules().from_description(description) == domain


def test_archive_series_never_enter_the_pipeline(scanned: Catalog, archive) -> None:
    assert scanned.completion.complete_quiet_series(0, now=utcnow() + timedelta(days=1)) == []
    assert scanned.queue.claim_for_processing() is None
    assert scanned.views.series_overview(limit=100) == []  # `denoise-node status` shows only what the node received
    assert archive_overview(scanned)


def test_scan_leaves_series_received_by_the_node_alone(catalog: Catalog, archive) -> None:
    ld_dir = archive[1][0].directory / "LD"
    ds = pydicom.dcmread(ld_dir / "0001.dcm", stop_before_pixels=True)
    catalog.intake.record_instance(
        InstanceMeta(
            patient_id=ds.PatientID,
            study_uid=ds.StudyInstanceUID,
            series_uid=ds.SeriesInstanceUID,
            sop_uid=ds.SOPInstanceUID,
            sop_class_uid=ds.SOPClassUID,
            transfer_syntax=ds.file_meta.TransferSyntaxUID,
            modality="CT",
            series_description=ds.SeriesDescription,
            instance_number=1,
            path="/spool/1.dcm",
            size=1,
        )
    )
    report = scan_archive(catalog, ld_dir)
    assert report.instances_added == 0 and len(report.skipped) == SLICES
    assert all("node's pipeline" in why for why in report.skipped.values())
    assert catalog.views.series_state(ds.SeriesInstanceUID) is SeriesState.RECEIVING
    assert archive_overview(catalog) == []


# ---- split -----------------------------------------------------------------------------------------------------


def _patients_of(paths: list[Path]) -> set[str]:
    return {p.parent.parent.name for p in paths}


def test_split_is_patient_level_disjoint_and_stratified(scanned: Catalog, archive) -> None:
    records = archive[1]
    split = make_split(scanned, seed=11)
    assert set(split) == set(ROLES)
    assigned = [pid for role in ROLES for pid in split[role]]
    assert sorted(assigned) == sorted(r.patient_id for r in records)  # every patient once: no overlap
    assert [len(split[r]) for r in ROLES] == [4, 4, 2, 0]  # 8 train (two halves), 2 test, val rounds to 0
    parts = {r.patient_id: r.body_part.upper() for r in records}
    for role in ("train_ld", "train_hd", "test"):
        assert {parts[p] for p in split[role]} == {"CHEST", "ABDOMEN"}, role

    ld_files, hd_files = training_files(scanned, "LD"), training_files(scanned, "hd")
    assert len(ld_files) == len(hd_files) == 4 * SLICES
    assert _patients_of(ld_files) == set(split["train_ld"]) and {p.parent.name for p in ld_files} == {"LD"}
    assert _patients_of(hd_files) == set(split["train_hd"]) and {p.parent.name for p in hd_files} == {"HD"}
    with pytest.raises(ValueError):
        training_files(scanned, "REF")

    pairs = paired_slices(scanned, "test")
    assert {p.patient_id for p in pairs} == set(split["test"])
    assert len(pairs) == len(split["test"]) * SLICES
    for pair in pairs:
        assert (pair.ld.parent.name, pair.hd.parent.name, pair.ref.parent.name) == ("LD", "HD", "REF")
        assert pair.ld.name == pair.hd.name == pair.ref.name == f"{pair.instance_number:04d}.dcm"
        assert pair.ld.parent.parent.name == pair.patient_id and pair.body_part == parts[pair.patient_id]
    assert paired_slices(scanned, "val") == []
    with pytest.raises(ValueError, match="unknown split role"):
        paired_slices(scanned, "train")

    # Paired mode: LD/HD pairs of the training patients only (both halves), never of test or val patients.
    train_pairs = training_pairs(scanned)
    assert {p.patient_id for p in train_pairs} == set(split["train_ld"]) | set(split["train_hd"])
    assert len(train_pairs) == 8 * SLICES
    assert all(p.ld.name == p.hd.name and p.ld.parent.parent == p.hd.parent.parent for p in train_pairs)

    summary = split_summary(scanned)
    assert summary["train_ld"]["patients"] == 4 and summary["train_ld"]["slices"] == 4 * SLICES
    assert summary["test"]["patients_CHEST"] == summary["test"]["patients_ABDOMEN"] == 1
    assert sum(summary[r]["patients"] for r in ROLES) == PATIENTS
    roles = {r["patient_id"]: r["split"] for r in archive_overview(scanned)}
    assert all(roles[pid] == role for role in ROLES for pid in split[role])


def test_split_is_stable_for_a_seed(scanned: Catalog, archive, tmp_path: Path) -> None:
    first = make_split(scanned, seed=5)
    assert make_split(scanned, seed=5) == first
    fresh = _catalog(tmp_path / "fresh.sqlite")
    scan_archive(fresh, archive[0])
    assert make_split(fresh, seed=5) == first
    fresh.close()

    with pytest.raises(ValueError, match="seed"):
        make_split(scanned, seed=6)
    replaced = make_split(scanned, seed=6, force=True)
    with scanned.db.session() as s:
        assert set(s.scalars(select(Split.seed))) == {6}
    assert make_split(scanned, seed=6) == replaced


def test_a_patient_without_hd_trains_the_ld_side_and_a_rescan_that_breaks_a_role_asks_to_resplit(
    catalog: Catalog, archive, tmp_path: Path
) -> None:
    root = tmp_path / "three"
    for rec in archive[1][:3]:
        _copy(rec.directory, root / rec.patient_id)
    lost_hd = archive[1][2]
    shutil.move(root / lost_hd.patient_id / "HD", tmp_path / "HD")
    scan_archive(catalog, root)
    split = make_split(catalog)
    assert lost_hd.patient_id in split["train_ld"]  # LD only: the LD side of unpaired training, never test
    assert [len(split[r]) for r in ROLES] == [1, 1, 1, 0]  # the two pairs: one test, one evens out train_hd

    shutil.move(tmp_path / "HD", root / lost_hd.patient_id / "HD")
    scan_archive(catalog, root)
    assert make_split(catalog) == split  # now paired: train_ld is still a role it can take
    tested = split["test"][0]
    shutil.move(root / tested / "HD", tmp_path / "HD")
    scan_archive(catalog, root)
    with pytest.raises(ValueError, match=f"patients \\['{tested}'\\] no longer hold"):
        make_split(catalog)
    split = make_split(catalog, force=True)
    assert tested in split["train_ld"] and split["test"] and tested not in split["test"]


def _paired(strata: dict[str, list[str]]) -> Patients:
    return Patients({pid: part for part, ids in strata.items() for pid in ids}, {}, {}, {})


def test_apportion_keeps_test_and_both_training_halves() -> None:
    fractions = (0.80, 0.15, 0.05)
    assert apportion(2, fractions) == (2, 0, 0)
    assert apportion(3, fractions) == (2, 1, 0)
    assert apportion(20, fractions) == (16, 3, 1)
    with pytest.raises(ValueError):
        apportion(1, fractions)
    roles = assign_roles(_paired({"CHEST": ["a", "b"], "ABDOMEN": ["c"]}), seed=0, fractions=fractions)
    assert sorted(roles.values()) == ["test", "train_hd", "train_ld"]


def test_a_zero_train_fraction_makes_a_held_out_archive() -> None:
    """A fresh test archive (`catalog split --test 1 --val 0`) and a training archive without test patients."""
    assert apportion(8, (0.0, 1.0, 0.0)) == (0, 8, 0)
    assert apportion(36, (0.88, 0.0, 0.12)) == (32, 0, 4)
    strata = {"chest": [f"c{i}" for i in range(4)], "abdomen": [f"a{i}" for i in range(4)]}
    roles = assign_roles(_paired(strata), 0, (0.0, 1.0, 0.0))
    assert set(roles.values()) == {"test"}


def test_pairs_need_the_same_frame_of_reference_and_position(scanned: Catalog, archive, tmp_path: Path) -> None:
    """An HD slice from another frame of reference (or another z) is not the partner of its LD slice."""
    split = make_split(scanned, seed=11)
    pid = split["train_ld"][0]
    hd_path = archive[0] / pid / "HD" / "0001.dcm"
    ds = pydicom.dcmread(hd_path)
    ds.FrameOfReferenceUID = "1.2.3.4.5.6"
    ds.save_as(hd_path)
    try:
        kept = [p for p in training_pairs(scanned) if p.patient_id == pid]
        assert [p.instance_number for p in kept] == list(range(2, SLICES + 1))
    finally:
        ds.FrameOfReferenceUID = pydicom.dcmread(archive[0] / pid / "LD" / "0001.dcm").FrameOfReferenceUID
        ds.save_as(hd_path)


# The split of this all-paired archive as it was before unpaired patients took part (commit 501c029): pairs-only
# archives, the project's synthetic ones among them, must split exactly as before.
BEFORE_UNPAIRED = {
    (11, (0.8, 0.15, 0.05)): {
        "train_ld": ["SYNTH0003", "SYNTH0005", "SYNTH0006", "SYNTH0010"],
        "train_hd": ["SYNTH0002", "SYNTH0007", "SYNTH0008", "SYNTH0009"],
        "test": ["SYNTH0001", "SYNTH0004"],
        "val": [],
    },
    (0, (0.6, 0.2, 0.2)): {
        "train_ld": ["SYNTH0005", "SYNTH0006", "SYNTH0007"],
        "train_hd": ["SYNTH0002", "SYNTH0008", "SYNTH0009"],
        "test": ["SYNTH0001", "SYNTH0004"],
        "val": ["SYNTH0003", "SYNTH0010"],
    },
    (5, (0.88, 0.0, 0.12)): {
        "train_ld": ["SYNTH0001", "SYNTH0003", "SYNTH0004", "SYNTH0008", "SYNTH0009"],
        "train_hd": ["SYNTH0002", "SYNTH0005", "SYNTH0006", "SYNTH0007"],
        "test": [],
        "val": ["SYNTH0010"],
    },
}


@pytest.mark.parametrize(("seed", "fractions"), list(BEFORE_UNPAIRED))
def test_an_all_paired_archive_splits_as_before(scanned: Catalog, seed: int, fractions) -> None:
    assert make_split(scanned, seed=seed, fractions=fractions, force=True) == BEFORE_UNPAIRED[(seed, fractions)]
