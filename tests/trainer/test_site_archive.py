"""A site's archive: its own names (QD/FD), its doses, no REF and unpaired patients, through `catalog scan` and
`catalog split` (issue 29, items 1 and 2).

The archive is the project's simulator at a tiny size with the headers a site writes: SeriesDescription
"ABDOMEN 1.0 QD" / "CHEST 1.0 FD", 25 / 100 mAs and their CTDIvol, or names that say nothing at all.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from denoise_trainer.archive.assign import Patients, assign_roles
from denoise_trainer.archive.domain import CTDI_THRESHOLD, DESCRIPTION, PROTOCOL, SITE_NAME, DomainRules
from denoise_trainer.archive.recognise import RELATIVE, SeriesFacts, recognise
from denoise_trainer.archive.scan import archive_overview, scan_archive
from denoise_trainer.archive.site_rules import RulesError, load_rules
from denoise_trainer.archive.split import NoTrainingPairs, make_split, split_summary, training_files, training_pairs
from denoise_trainer.archive.synth import PatientRecord, synthesize_archive
from denoise_trainer.data.assembly import training_selection
from dicom_denoise_node.cli import app
from dicom_denoise_node.config import ConfigError
from dicom_denoise_node.store.catalog import Catalog

PATIENTS = 8
SITE_NAMES = {"LD": "{part} 1.0 QD", "HD": "{part} 1.0 FD"}
SITE_MAS = {"LD": 25.0, "HD": 100.0}
CTDI_PER_MAS = 0.065


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> list[PatientRecord]:
    return synthesize_archive(tmp_path_factory.mktemp("synth"), patients=PATIENTS, slices=2, size=64, seed=7, views=48)


def _write_series(src: Path, dst: Path, description: str, mas: float | None, **edits: object) -> None:
    """Copy one simulated series with a site's headers: its name, its dose, and any tag in ``edits`` (None drops)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.SeriesDescription = description
        if mas is not None:
            ds.Exposure, ds.XRayTubeCurrent = int(mas), int(mas / 0.5)
            ds.CTDIvol = round(mas * CTDI_PER_MAS, 3)
        for keyword, value in edits.items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.save_as(dst / f.name, enforce_file_format=True)


def site_archive(
    records: list[PatientRecord],
    dst: Path,
    kinds: dict[str, tuple[str, ...]] | None = None,
    names: dict[str, str] = SITE_NAMES,
    mas: dict[str, float] = SITE_MAS,
    **edits: object,
) -> Path:
    """The site's archive: per patient the series in ``kinds`` (default LD and HD, never the simulator's REF)."""
    for rec in records:
        for kind in (kinds or {}).get(rec.patient_id, ("LD", "HD")):
            name = names[kind].format(part=rec.body_part.upper())
            _write_series(rec.directory / kind, dst / rec.patient_id / kind, name, mas[kind], **edits)
    return dst


def _domains(catalog: Catalog) -> dict[tuple[str, str], str | None]:
    """(patient, LD or HD as the site named it) → the domain the scan gave."""
    return {
        (r["patient_id"], "LD" if "QD" in r["description"] else "HD"): r["domain"] for r in archive_overview(catalog)
    }


def _scan_cli(root: Path, catalog: Path, *extra: str) -> object:
    return CliRunner().invoke(app, ["catalog", "scan", str(root), "--catalog", f"sqlite:///{catalog}", *extra])


# ---- item 1: the catalog understands a site's archive ------------------------------------------------------------


def test_a_qd_fd_archive_scans_with_no_dose_flags(synth, tmp_path: Path) -> None:
    root = site_archive(synth, tmp_path / "site")
    result = _scan_cli(root, tmp_path / "c.sqlite")
    assert result.exit_code == 0, result.output
    assert "series per dose domain" in result.output
    assert result.output.count("name in SeriesDescription: 8") == 2  # LD and HD rows: the names, not the dose
    cat = Catalog(f"sqlite:///{tmp_path / 'c.sqlite'}")
    assert _domains(cat) == {(r.patient_id, d): d for r in synth for d in ("LD", "HD")}
    cat.close()


def _facts(uid: str, patient: str, mas: float | None, ctdi: float | None = None, **names: str) -> SeriesFacts:
    return SeriesFacts(
        uid, patient, "ABDOMEN", names.get("description", "Axial 1.0 B30f"), names.get("protocol", ""), mas, ctdi
    )


def test_the_dose_relative_to_the_patients_other_series_decides_when_names_are_silent(synth, tmp_path: Path) -> None:
    silent = {"LD": "{part} 1.0 B30f", "HD": "{part} 1.0 B30f"}
    root = site_archive(synth[:2], tmp_path / "silent", names=silent)
    cat = Catalog(f"sqlite:///{tmp_path / 'c.sqlite'}")
    report = scan_archive(cat, root)
    assert report.recognised == {"LD": {f"{RELATIVE} (CTDIvol)": 2}, "HD": {f"{RELATIVE} (CTDIvol)": 2}}
    by_uid = {r["series_uid"]: r["domain"] for r in archive_overview(cat)}
    for rec in synth[:2]:
        for kind in ("LD", "HD"):
            uid = pydicom.dcmread(root / rec.patient_id / kind / "0001.dcm").SeriesInstanceUID
            assert by_uid[uid] == kind
    cat.close()

    rules = DomainRules()
    decided = recognise(
        [
            _facts("a-ld", "A", 25.0),  # mAs only: a quarter of the other series
            _facts("a-hd", "A", 100.0),
            _facts("a-hd2", "A", 95.0),  # a second HD acquisition, within hd_min_ratio of the highest
            _facts("b-1", "B", 75.0),  # 0.75: neither clearly reduced nor the full dose
            _facts("b-2", "B", 100.0),
            _facts("c-1", "C", 30.0),  # one series of its patient: nothing to compare
            _facts("d-1", "D", 50.0, ctdi=6.0),  # CTDIvol is compared where the series carry it, not mAs
            _facts("d-2", "D", 100.0, ctdi=6.2),
        ],
        rules,
    )
    assert {uid: d.domain for uid, d in decided.items()} == {
        "a-ld": "LD",
        "a-hd": "HD",
        "a-hd2": "HD",
        "b-1": None,
        "b-2": None,
        "c-1": None,
        "d-1": None,
        "d-2": None,
    }
    assert decided["a-ld"].rule == f"{RELATIVE} (mAs)"
    assert recognise([_facts("x", "X", 25.0), _facts("y", "X", 100.0)], DomainRules(relative=False))["x"].domain is None


def test_a_name_in_protocolname_gives_way_to_the_dose_but_the_seriesdescription_does_not(caplog) -> None:
    rules = DomainRules()
    shared = recognise(
        [_facts("lo", "A", 25.0, protocol="Routine Abdomen"), _facts("hi", "A", 100.0, protocol="Routine Abdomen")],
        rules,
    )
    assert (shared["lo"].domain, shared["hi"].domain) == ("LD", "HD")
    alone = recognise([_facts("lo", "A", 25.0, protocol="Abdomen low dose")], rules)["lo"]
    assert (alone.domain, alone.rule) == ("LD", PROTOCOL)

    with caplog.at_level(logging.WARNING, logger="denoise_trainer.archive.recognise"):
        named = recognise(
            [_facts("x", "A", 25.0, description="ABD FD"), _facts("y", "A", 100.0, description="ABD QD")], rules
        )
    assert (named["x"].domain, named["x"].rule) == ("HD", DESCRIPTION)
    assert "named HD" in caplog.text and "the name is kept" in caplog.text


def test_the_scan_reads_protocolname_and_ctdivol_from_the_files(synth, tmp_path: Path) -> None:
    silent = {"LD": "{part} 1.0 B30f", "HD": "{part} 1.0 B30f"}
    kinds = {synth[0].patient_id: ("LD",), synth[1].patient_id: ("HD",)}
    root = site_archive(synth[:2], tmp_path / "site", kinds=kinds, names=silent, ProtocolName="Abdomen low dose")
    cat = Catalog(f"sqlite:///{tmp_path / 'c.sqlite'}")
    assert scan_archive(cat, root).recognised == {"LD": {PROTOCOL: 2}}
    rules = DomainRules(ld=None, hd=None, ld_max_ctdivol=2.0, hd_min_ctdivol=5.0)  # 25 mAs: 1.6 mGy, 100: 6.5
    assert scan_archive(cat, root, rules).recognised == {"LD": {CTDI_THRESHOLD: 1}, "HD": {CTDI_THRESHOLD: 1}}
    cat.close()


@pytest.mark.parametrize(
    ("description", "domain"),
    [
        ("ABDOMEN 1.0 QD", "LD"),
        ("CHEST 1.0 FD", "HD"),
        ("Thorax 3.0 ND", "HD"),
        ("Standard dose chest", "HD"),
        ("Normal dose", "HD"),
        ("Reduced dose 1mm", "LD"),
        ("Abdomen reduced", "LD"),
        ("25% dose", "LD"),
        ("100% dose", "HD"),
        ("1/4 dose", "LD"),
        ("quarter-dose", "LD"),
        ("CHEST STANDARD 1.25", None),  # a GE kernel name, not a dose
        ("SQDR", None),  # letters inside a word are no name
        ("QD and FD", None),
    ],
)
def test_built_in_names(description: str, domain: str | None) -> None:
    assert DomainRules().from_description(description) == domain


def test_unknown_series_exit_3_and_the_message_names_the_options_that_fix_it(synth, tmp_path: Path) -> None:
    silent = {"LD": "{part} 1.0 lo", "HD": "{part} 1.0 hi"}
    kinds = {synth[0].patient_id: ("LD",), synth[1].patient_id: ("HD",)}  # one series each: nothing relative
    root = site_archive(synth[:2], tmp_path / "silent", kinds=kinds, names=silent)
    result = _scan_cli(root, tmp_path / "a.sqlite")
    assert result.exit_code == 3, result.output
    assert "2 series have no dose domain" in result.output
    assert "--rules" in result.output and "--ld-max-mas" in result.output and "--hd-min-mas" in result.output
    assert "no rule decided" in result.output and "25 mAs" in result.output  # the summary and what the rules saw

    fixed = _scan_cli(root, tmp_path / "b.sqlite", "--ld-max-mas", "50", "--hd-min-mas", "80")
    assert fixed.exit_code == 0, fixed.output
    rules = tmp_path / "rules.toml"
    rules.write_text("[dose]\nld_max_ctdivol = 3.0\nhd_min_ctdivol = 5\n")
    by_file = _scan_cli(root, tmp_path / "c.sqlite", "--rules", str(rules))
    assert by_file.exit_code == 0 and "CTDIvol threshold: 1" in by_file.output, by_file.output


def test_a_sites_rules_file_names_its_series(synth, tmp_path: Path) -> None:
    names = {"LD": "{part} 1.0 I30f S25", "HD": "{part} 1.0 I30f S100"}
    kinds = {synth[0].patient_id: ("LD",), synth[1].patient_id: ("HD",)}
    root = site_archive(synth[:2], tmp_path / "site", kinds=kinds, names=names)
    rules = tmp_path / "rules.toml"
    rules.write_text("[names]\nld = ['\\bS25\\b', 'SAFIRE 25']\nhd = '\\bS100\\b'\n")
    cat = Catalog(f"sqlite:///{tmp_path / 'c.sqlite'}")
    report = scan_archive(cat, root, load_rules(rules))
    assert report.recognised == {"LD": {SITE_NAME: 1}, "HD": {SITE_NAME: 1}}
    cat.close()
    # the site's names come first; builtin = false leaves only them
    assert load_rules(rules).classify("ABD S25 FD", None) == ("LD", SITE_NAME)
    rules.write_text("[names]\nhd = 'S100'\nbuiltin = false\n")
    assert load_rules(rules).classify("ABDOMEN QD", None) == (None, "unknown")
    # the CLI's thresholds win over the file's
    rules.write_text("[dose]\nld_max_mas = 10\n")
    assert load_rules(rules, ld_max_mas=30.0, hd_min_mas=None).from_exposure(25.0) == "LD"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[dose]\nld_max_mass = 3\n", "unknown key 'dose.ld_max_mass'"),
        ("[names]\nqd = 'QD'\n", "unknown key 'names.qd'"),
        ("[thresholds]\nld_max_mas = 3\n", "unknown key 'thresholds'"),
        ("[names]\nld = '(QD'\n", "names.ld is not a valid regular expression"),
        ("[dose]\nhd_min_mas = 'many'\n", "dose.hd_min_mas must be a positive number"),
        ("[relative]\nenabled = 1\n", "relative.enabled must be true or false"),
        ("[dose]\nld_max_mas = 90\nhd_min_mas = 80\n", "ld_max_mas (90.0 mAs) must be below hd_min_mas"),
        ("[dose\n", "not valid TOML"),
    ],
)
def test_a_bad_rules_file_is_refused_naming_the_key_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    rules = tmp_path / "site-rules.toml"
    rules.write_text(text)
    with pytest.raises(RulesError, match="site-rules.toml") as err:
        load_rules(rules)
    assert message in str(err.value)
    result = _scan_cli(tmp_path, tmp_path / "c.sqlite", "--rules", str(rules))
    assert result.exit_code == 2 and message in result.output and "site-rules.toml" in result.output


# ---- item 2: unpaired archives train ---------------------------------------------------------------------------


def _unpaired_layout(records: list[PatientRecord], paired: int) -> dict[str, tuple[str, ...]]:
    """The first ``paired`` patients keep LD and HD; the others alternate LD-only and HD-only."""
    return {
        r.patient_id: ("LD", "HD") if i < paired else (("LD",) if (i - paired) % 2 == 0 else ("HD",))
        for i, r in enumerate(records)
    }


def _scan_and_split(records: list[PatientRecord], tmp_path: Path, kinds: dict[str, tuple[str, ...]]) -> tuple[str, str]:
    """The site's archive through `catalog scan` and `catalog split` as a user runs them: (catalog URL, output)."""
    root = site_archive(records, tmp_path / "site", kinds=kinds)
    assert _scan_cli(root, tmp_path / "c.sqlite").exit_code == 0
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    result = CliRunner().invoke(app, ["catalog", "split", "--catalog", url])
    assert result.exit_code == 0, result.output
    return url, result.output


def test_unpaired_patients_train_their_own_side_and_pairs_test(synth, tmp_path: Path) -> None:
    kinds = _unpaired_layout(synth, paired=3)  # 3 paired, 3 LD-only, 2 HD-only
    url, output = _scan_and_split(synth, tmp_path, kinds)
    assert "unpaired patients (no study with both LD and HD): 3 train the LD side, 2 the HD side" in output

    cat = Catalog(url)
    split = make_split(cat, fractions=(1.0 - 0.15 - 0.05, 0.15, 0.05))  # the CLI's split, read back
    ld_only = {pid for pid, k in kinds.items() if k == ("LD",)}
    hd_only = {pid for pid, k in kinds.items() if k == ("HD",)}
    paired = {pid for pid, k in kinds.items() if len(k) == 2}
    assert ld_only <= set(split["train_ld"]) and hd_only <= set(split["train_hd"])
    assert (len(split["test"]), len(split["val"])) == (1, 1) and set(split["test"]) | set(split["val"]) <= paired
    assert (len(split["train_ld"]), len(split["train_hd"])) == (3, 3)  # the third pair evens out the HD side
    summary = split_summary(cat)
    assert (summary["train_ld"]["unpaired"], summary["train_hd"]["unpaired"], summary["test"]["unpaired"]) == (3, 2, 0)
    assert {Path(p).parent.parent.name for p in training_files(cat, "LD")} == set(split["train_ld"])
    trained_pair = paired - set(split["test"]) - set(split["val"])
    assert {p.patient_id for p in training_pairs(cat)} == trained_pair  # pairs are used where they exist
    cat.close()


def test_an_archive_without_pairs_splits_for_unpaired_training_and_paired_training_says_why_not(
    synth, tmp_path: Path
) -> None:
    kinds = _unpaired_layout(synth, paired=0)
    url, output = _scan_and_split(synth, tmp_path, kinds)
    assert "no test or validation patients" in output
    cat = Catalog(url)
    split = make_split(cat)
    assert (len(split["train_ld"]), len(split["train_hd"]), split["test"], split["val"]) == (4, 4, [], [])
    with pytest.raises(NoTrainingPairs, match="paired training needs patients with an LD and an HD series"):
        training_pairs(cat)
    cat.close()
    files = training_selection(url, "unpaired")
    assert len(files.ld) == len(files.hd) == 8 and files.val == []
    with pytest.raises(ConfigError, match="--pairing unpaired"):
        training_selection(url, "paired")
    listing = CliRunner().invoke(app, ["catalog", "list", "--catalog", url])
    assert listing.exit_code == 0 and "0 slices of 0 patients" in listing.output


def test_ld_and_hd_in_separate_studies_train_either_side_and_one_dose_only_is_refused(synth, tmp_path: Path) -> None:
    root = site_archive(synth[:3], tmp_path / "site", kinds=_unpaired_layout(synth[:3], paired=0))  # 2 LD, 1 HD
    rec = synth[4]  # LD and HD on different days: two studies, no pair
    _write_series(rec.directory / "LD", root / rec.patient_id / "LD", "ABDOMEN QD", 25.0)
    _write_series(rec.directory / "HD", root / rec.patient_id / "HD", "ABDOMEN FD", 100.0, StudyInstanceUID="1.2.3.9")
    cat = Catalog(f"sqlite:///{tmp_path / 'c.sqlite'}")
    scan_archive(cat, root)
    split = make_split(cat)
    assert rec.patient_id in split["train_hd"] and not split["test"]  # the smaller half, never test
    assert (len(split["train_ld"]), len(split["train_hd"])) == (2, 2)
    cat.close()

    only_ld = Patients({}, {"a": "CHEST", "b": "CHEST"}, {}, {})
    with pytest.raises(ValueError, match="no patient has an HD series .* train_hd would be empty"):
        assign_roles(only_ld, 0, (0.8, 0.15, 0.05))


def test_pairs_are_kept_for_test_and_the_rest_even_out_the_training_halves() -> None:
    patients = Patients(
        paired={f"p{i}": "CHEST" for i in range(4)},
        ld_only={f"l{i}": "CHEST" for i in range(6)},
        hd_only={"h0": "CHEST"},
        separate={},
    )
    roles = assign_roles(patients, 3, (0.8, 0.15, 0.05))
    held_out = [pid for pid, role in roles.items() if role in ("test", "val")]
    assert all(pid.startswith("p") for pid in held_out) and len(held_out) == 2  # 11 patients: 2 test, 0 val
    train_paired = {pid for pid in patients.paired if roles[pid].startswith("train")}
    assert {pid for pid, role in roles.items() if role == "train_hd"} == {"h0"} | train_paired  # the smaller half
    # no pairs to spare: test and val shrink so that train_hd still gets a patient
    scarce = Patients({"p0": "CHEST"}, {f"l{i}": "CHEST" for i in range(9)}, {}, {})
    roles = assign_roles(scarce, 0, (0.8, 0.15, 0.05))
    assert roles["p0"] == "train_hd" and set(roles.values()) == {"train_ld", "train_hd"}


def test_a_held_out_archive_leaves_unpaired_patients_out() -> None:
    patients = Patients({"p0": "CHEST", "p1": "ABDOMEN"}, {"l0": "CHEST"}, {"h0": "CHEST"}, {})
    assert assign_roles(patients, 0, (0.0, 1.0, 0.0)) == {"p0": "test", "p1": "test"}
