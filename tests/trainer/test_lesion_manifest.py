"""A site's lesion manifest (evaluate/lesion_manifest.py): the CSV a site writes, checked line by line, and placed on
the evaluated slices by InstanceNumber or SOPInstanceUID, with mm through the slice's PixelSpacing."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from denoise_trainer.archive.split import SlicePair
from denoise_trainer.archive.synth import synthesize_archive
from denoise_trainer.evaluate.lesion_manifest import LesionManifestError, manifest_truths, read_manifest

HEADER = "patient_id,instance_number,sop_instance_uid,x_px,y_px,radius_px,radius_mm,contrast_hu,label\n"


def _write(tmp_path: Path, text: str, name: str = "lesions.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> list[SlicePair]:
    """Two slices of one simulated patient, as the split hands them to `evaluate`."""
    out = tmp_path_factory.mktemp("manifest-archive")
    (patient,) = synthesize_archive(out, patients=1, slices=2, size=64, seed=4, body_parts=("abdomen",), views=48)
    d = patient.directory
    return [SlicePair(d.name, "abdomen", d / "LD" / f"{i:04d}.dcm", d / "HD" / f"{i:04d}.dcm", None, i) for i in (1, 2)]


def test_a_manifest_as_a_spreadsheet_writes_it_is_read(tmp_path: Path) -> None:
    """Excel's byte-order mark, semicolons, DICOM keywords as column names, comments and blank lines."""
    text = (
        "# lesions read on HD by Dr X, 2024-05\n"
        "PatientID;InstanceNumber;SOPInstanceUID;X_px;Y_px;Radius_mm;Contrast_HU;Label\n"
        "\n"
        "P1;12;;100.5;80;4;-20;liver metastasis\n"
        "# a second one\n"
        "P1;;1.2.3.4;40;41;2.5;35;\n"
    )
    lesions = read_manifest(_write(tmp_path, text, encoding="utf-8-sig"))
    assert [le.line for le in lesions] == [4, 6]
    first, second = lesions
    assert first.patient_id == "P1" and first.instance_number == 12 and first.center_px == (100.5, 80.0)
    assert first.radius_mm == 4.0 and first.radius_px is None and first.contrast_hu == -20.0
    assert first.label == "liver metastasis"
    assert second.instance_number is None and second.sop_instance_uid == "1.2.3.4" and second.label == ""


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("P1,3,,abc,10,2,,20,", "x_px 'abc' is not a number"),
        ("P1,3,,10,10,2,1.5,20,", "one of radius_px or radius_mm"),
        ("P1,3,,10,10,,,20,", "one of radius_px or radius_mm"),
        ("P1,,,10,10,2,,20,", "instance_number or sop_instance_uid"),
        ("P1,1.5,,10,10,2,,20,", "instance_number '1.5'"),
        ("P1,3,,10,10,2,,0,", "contrast_hu must be given and not 0"),
        ("P1,3,,10,10,-2,,20,", "radius_px must be a positive number"),
        (",3,,10,10,2,,20,", "patient_id is empty"),
        ("P1,3,,10,10,2,,20,x,y", "10 cells, the header has 9"),
    ],
)
def test_each_bad_row_is_named_by_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    path = _write(tmp_path, HEADER + "P1,2,,10,10,2,,20,\n" + row + "\n")
    with pytest.raises(LesionManifestError) as caught:
        read_manifest(path)
    assert f"{path}:3: " in str(caught.value) and message in str(caught.value)


def test_every_bad_row_is_listed_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, HEADER + "P1,x,,1,1,1,,5,\nP1,2,,1,1,1,,5,\nP1,3,,1,1,,,5,\n")
    with pytest.raises(LesionManifestError) as caught:
        read_manifest(path)
    assert f"{path}:2: " in str(caught.value) and f"{path}:4: " in str(caught.value)
    assert f"{path}:3: " not in str(caught.value)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("patient_id,instance_number,x_px,y_px,radius,contrast_hu", "unknown column 'radius'"),
        ("patient_id,instance_number,x_px,y_px,radius_px", "missing column(s) contrast_hu"),
        ("patient_id,x_px,y_px,radius_px,contrast_hu", "instance_number or sop_instance_uid"),
    ],
)
def test_a_bad_header_is_named_with_its_line(tmp_path: Path, header: str, message: str) -> None:
    path = _write(tmp_path, "# comment\n" + header + "\nP1,1,1,1,1,1\n")
    with pytest.raises(LesionManifestError) as caught:
        read_manifest(path)
    assert f"{path}:2: " in str(caught.value) and message in str(caught.value)


def test_a_manifest_without_rows_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LesionManifestError, match="no lesion rows"):
        read_manifest(_write(tmp_path, "# nothing yet\n" + HEADER))


def test_rows_are_placed_by_instance_number_or_either_image_uid_and_sized_in_mm(
    tmp_path: Path, pairs: list[SlicePair]
) -> None:
    pid = pairs[0].patient_id
    ld2, hd1 = dcmread(pairs[1].ld), dcmread(pairs[0].hd)
    spacing = float(sum(float(v) for v in ld2.PixelSpacing)) / 2
    text = HEADER + (
        f"{pid},1,,30,31,3,,25,by number\n"
        f",,,,,,,,\n"
        f"{pid},,{ld2.SOPInstanceUID},20,21,,{2 * spacing!r},-15,by LD uid\n"
        f"{pid},,{hd1.SOPInstanceUID},10,11,2,,40,by HD uid\n"
        f"OTHER,1,,10,10,2,,40,another patient\n"
        f"{pid},9,,10,10,2,,40,a slice not evaluated\n"
    )
    one, two = manifest_truths(_write(tmp_path, text), pairs)
    assert [(t.center_px, t.radius_px, t.contrast_hu, t.kind) for t in one] == [
        ((30.0, 31.0), 3.0, 25.0, "by number"),
        ((10.0, 11.0), 2.0, 40.0, "by HD uid"),
    ]
    assert [t.lesion_index for t in one] == [2, 5]  # the manifest's line: each lesion its own key
    (lesion,) = two
    assert lesion.slice_index == 2 and lesion.radius_px == pytest.approx(2.0) and lesion.kind == "by LD uid"
    assert lesion.radius_mm == pytest.approx(2 * spacing) and one[0].radius_mm == pytest.approx(3 * spacing)


def test_a_centre_outside_the_image_is_named_by_line(tmp_path: Path, pairs: list[SlicePair]) -> None:
    path = _write(tmp_path, HEADER + f"{pairs[0].patient_id},2,,64,10,2,,40,\n")
    with pytest.raises(LesionManifestError, match=rf"{path}:2: centre \(64, 10\) lies outside the 64×64 image"):
        manifest_truths(path, pairs)


def test_a_manifest_that_matches_no_evaluated_slice_is_refused(tmp_path: Path, pairs: list[SlicePair]) -> None:
    """IDs that do not match (another PatientID spelling) must not pass as "no lesions here"."""
    path = _write(tmp_path, HEADER + "synth-0001,1,,10,10,2,,40,\n")
    with pytest.raises(LesionManifestError, match="none of its 1 lesions lies on an evaluated slice"):
        manifest_truths(path, pairs)
