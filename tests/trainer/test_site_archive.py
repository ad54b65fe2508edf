"""A site's archive: its own names (QD/FD), its doses, no REF and unpaired patients, through `catalog scan` and
`catalog split` (issue 29, items 1 and 2).

The archive is the project's simulator at a tiny size with the headers a site writes: SeriesDescription
"ABDOMEN 1.0 QD" / "CHEST 1.0 FD", 25 / 100 mAs and their CTDIvol, or names that say nothing at all.
"""

from __future__ import annotations

import json
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
from denoise_trainer.train.checkpoint import load_checkpoint
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
    kinds = _unpaired_layout(synth, paired=0)  # 4 LD-only, 4 HD-only
    url, output = _scan_and_split(synth, tmp_path, kinds)
    assert "no test patients: test needs an LD and an HD series in one study" in output
    assert "val: 1 LD-only patient (no pairs: checkpoints chosen without a reference)" in output
    cat = Catalog(url)
    split = make_split(cat)  # read back: a one-dose val patient is a role its patient can hold
    assert (len(split["train_ld"]), len(split["train_hd"]), split["test"]) == (3, 4, [])
    assert len(split["val"]) == 1 and kinds[split["val"][0]] == ("LD",)
    assert (split_summary(cat)["val"]["ld_only"], split_summary(cat)["val"]["slices"]) == (1, 2)
    with pytest.raises(NoTrainingPairs, match="paired training needs patients with an LD and an HD series"):
        training_pairs(cat)
    cat.close()
    files = training_selection(url, "unpaired")
    assert (len(files.ld), len(files.hd), files.val) == (6, 8, [])
    assert {p.parent.parent.name for p in files.val_ld_unpaired} == set(split["val"]) and files.val_hd_unpaired == []
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


def _roles_of(roles: dict[str, str], role: str) -> list[str]:
    return sorted(pid for pid, r in roles.items() if r == role)


def test_without_pairs_val_takes_its_fraction_ld_only_first_then_hd_only_across_body_parts() -> None:
    parts = ("CHEST", "ABDOMEN")
    patients = Patients(
        paired={},
        ld_only={f"l{i}": parts[i % 2] for i in range(20)},
        hd_only={f"h{i}": parts[i % 2] for i in range(20)},
        separate={},
    )
    roles = assign_roles(patients, 4, (0.7, 0.1, 0.2))  # 40 patients: 8 val; test would need pairs
    val = _roles_of(roles, "val")
    assert len(val) == 8 and not _roles_of(roles, "test")
    assert sum(pid.startswith("l") for pid in val) == 4  # LD-only first, HD-only in turn
    assert {patients.ld_only[pid] for pid in val if pid.startswith("l")} == set(parts)
    assert (len(_roles_of(roles, "train_ld")), len(_roles_of(roles, "train_hd"))) == (16, 16)
    assert assign_roles(patients, 4, (0.7, 0.1, 0.2)) == roles  # a function of the seed
    # one val patient: LD-only, the criterion's slices; an odd count ends on LD
    assert [pid[0] for pid in _roles_of(assign_roles(patients, 0, (0.975, 0.0, 0.025)), "val")] == ["l"]
    three = _roles_of(assign_roles(patients, 0, (0.8, 0.125, 0.075)), "val")
    assert sorted(pid[0] for pid in three) == ["h", "l", "l"]


def test_one_dose_validation_keeps_both_training_halves_and_needs_an_ld_patient() -> None:
    lone = Patients({}, {"l0": "CHEST"}, {"h0": "CHEST", "h1": "CHEST"}, {})
    roles = assign_roles(lone, 0, (0.5, 0.0, 0.5))  # l0 is train_ld's only patient; HD-only alone scores nothing
    assert roles == {"l0": "train_ld", "h0": "train_hd", "h1": "train_hd"}
    # LD and HD in separate studies: either half or val, after the LD-only ones, while the halves keep one each
    separate = Patients({}, {"l0": "CHEST"}, {"h0": "CHEST"}, {"s0": "CHEST", "s1": "CHEST", "s2": "CHEST"})
    roles = assign_roles(separate, 0, (0.6, 0.0, 0.4))
    assert _roles_of(roles, "val") == ["h0", "l0"]
    assert len(_roles_of(roles, "train_ld")) == 2 and len(_roles_of(roles, "train_hd")) == 1
    no_ld_only = Patients({}, {}, {"h0": "CHEST"}, {"s0": "CHEST", "s1": "CHEST"})
    roles = assign_roles(no_ld_only, 0, (0.34, 0.0, 0.66))  # 3 patients: 1 val (both halves keep one)
    assert roles["h0"] == "train_hd" and sorted(roles[s] for s in ("s0", "s1")) == ["train_ld", "val"]


def test_val_takes_one_dose_patients_only_when_no_pair_is_left_for_it() -> None:
    # one pair, needed by train_hd: val (2 of 10) takes LD-only patients; test stays empty
    scarce = Patients({"p0": "CHEST"}, {f"l{i}": "CHEST" for i in range(9)}, {}, {})
    roles = assign_roles(scarce, 0, (0.6, 0.2, 0.2))
    assert roles["p0"] == "train_hd" and not _roles_of(roles, "test")
    assert len(_roles_of(roles, "val")) == 2 and all(pid.startswith("l") for pid in _roles_of(roles, "val"))
    # pairs enough for one val patient: val is that pair alone (the trainer ignores one-dose val beside a pair)
    mixed = Patients(
        {"p0": "CHEST", "p1": "CHEST"}, {f"l{i}": "CHEST" for i in range(6)}, {"h0": "CHEST", "h1": "CHEST"}, {}
    )
    roles = assign_roles(mixed, 0, (0.6, 0.1, 0.3))  # 10 patients: 1 test and 3 val asked, 2 pairs
    assert len(_roles_of(roles, "test")) == 1 and len(_roles_of(roles, "val")) == 1
    assert set(_roles_of(roles, "test") + _roles_of(roles, "val")) == {"p0", "p1"}


@pytest.fixture(scope="module")
def site_128(tmp_path_factory: pytest.TempPathFactory) -> list[PatientRecord]:
    """128 px: the no-reference criterion needs flat soft-tissue windows, which 64 px slices lack."""
    return synthesize_archive(tmp_path_factory.mktemp("s128"), patients=4, slices=2, size=128, seed=3, views=96)


def test_an_unpaired_archive_trains_to_a_best_pt_chosen_without_a_reference_and_exports_it(
    site_128, tmp_path: Path
) -> None:
    """The issue's contract on an archive without a single pair: scan, split, train, export best.pt."""
    kinds = _unpaired_layout(site_128, paired=0)  # 2 LD-only, 2 HD-only
    root = site_archive(site_128, tmp_path / "site", kinds=kinds)
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    runner = CliRunner()
    assert runner.invoke(app, ["catalog", "scan", str(root), "--catalog", url]).exit_code == 0
    split = runner.invoke(app, ["catalog", "split", "--catalog", url, "--val", "0.25"])
    assert "val: 1 LD-only patient (no pairs" in split.output, split.output
    run = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--catalog", url, "--run-dir", str(run), "--max-steps", "4", "--device", "cpu"]
    trained = runner.invoke(app, args)
    assert trained.exit_code == 0, trained.output
    best = run / "checkpoints" / "best.pt"
    assert best.is_file(), trained.output
    assert load_checkpoint(best)["selection"]["criterion"] == "no-reference"
    export = ["model", "export", str(best), "--name", "site", "--version", "1.0.0", "--out-dir", str(tmp_path / "m")]
    exported = runner.invoke(app, export)
    assert exported.exit_code == 0, exported.output
    meta = json.loads(next((tmp_path / "m").glob("site*.json")).read_text())
    assert meta["training"]["selection"]["criterion"] == "no-reference"


def test_split_says_when_val_is_empty_so_no_best_pt_will_be_chosen(synth, tmp_path: Path) -> None:
    root = site_archive(synth[:4], tmp_path / "site")  # 4 paired patients: --val 0.01 rounds to none
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    assert _scan_cli(root, tmp_path / "c.sqlite").exit_code == 0
    result = CliRunner().invoke(app, ["catalog", "split", "--catalog", url, "--test", "0.25", "--val", "0.01"])
    assert result.exit_code == 0 and "no validation patients" in result.output and "best.pt" in result.output
    assert "no test patients" not in result.output and "without a reference" not in result.output
