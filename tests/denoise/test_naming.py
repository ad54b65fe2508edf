"""A derived series a radiologist can tell apart: SeriesNumbers that never collide, descriptions that always fit."""

from __future__ import annotations

import pytest

from dicom_denoise_node.config import ConfigError, DeriveSettings, load_settings
from dicom_denoise_node.denoise.naming import MAX_IS, series_description, series_number

VALUES = {"model": "cyclegan-ld2hd-synthetic", "version": "1.1.0", "kind": "CycleGAN", "strength": "0.5",
          "noise": "", "level": "s0.5", "ensemble": "1"}  # fmt: skip


def test_series_numbers_never_collide_over_sources_derivations_and_reports():
    """Every (source number, derivation, derived or report) gets its own number, none below the block (where the
    scanner's numbers are), and the first derivation keeps the numbers of earlier releases (source + 1000, report
    + 2000). Sources 0-2100 (both sides of the block and of 10 000 / 100 000 boundaries through their widths) and
    the first 12 derivations of each; bounded: 2 101 × 12 × 2 numbers."""
    block = 1000
    seen: dict[int, tuple[int, int, bool]] = {}
    for source in range(2101):
        for variant in range(12):
            for report in (False, True):
                number = series_number(source, block, variant, report)
                assert number >= block and number <= MAX_IS
                assert number not in seen, (number, seen.get(number), (source, variant, report))
                seen[number] = (source, variant, report)
    assert series_number(2, block) == 1002 and series_number(2, block, report=True) == 2002
    # The collision: source 2's report and source 1002's derived series were both 2002.
    assert series_number(1002, block) != series_number(2, block, report=True)
    assert [series_number(2, block, v) for v in range(5)] == [1002, 3002, 5002, 7002, 10002]
    assert series_number(None, block) == series_number(0, block) == 1000


def test_series_numbers_never_collide_for_large_and_odd_source_numbers():
    block = 10
    cases = [(s, v) for s in (0, 9, 10, 99, 100, 999_999, 1_000_000) for v in range(8)]
    cases += [(12_345_678, v) for v in range(4)]
    numbers = {series_number(source, block, variant, report) for source, variant in cases for report in (False, True)}
    assert len(numbers) == 2 * len(cases)
    with pytest.raises(ValueError, match="too large"):
        series_number(200_000_000, 1000, 8)


def test_a_description_always_fits_and_keeps_its_suffix():
    template = "{source} DN {model} {version} {level}"
    for length in (0, 10, 26, 27, 40, 54, 64, 200):
        source = "S" * length
        text = series_description(template, VALUES, source)
        assert len(text) <= 64
        assert text.endswith("DN cyclegan-ld2hd-synthetic 1.1.0 s0.5"), text
        report = series_description(template, VALUES, source, suffix=" report")
        assert len(report) <= 64 and report.endswith("s0.5 report")
    backslash = series_description(template, VALUES, "Chest\\low dose")  # LO's value separator
    assert backslash == "Chest/low dose DN cyclegan-ld2hd-synthetic 1.1.0 s0.5"
    # A template that is too long on its own is cut at 64 (and logged): nothing else can give way.
    assert series_description("{source} " + "x" * 70, VALUES, "CT") == "x" * 63


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("{source} {strenght}", "unknown placeholder {strenght}"),
        ("{source} {}", "unknown placeholder {}"),
        ("{source} {strength:.2f}", "format spec"),
        ("{source} {model", "not a valid template"),
        ("{source.upper}", "unknown placeholder"),
    ],
)
def test_a_bad_template_is_refused_at_load_naming_key_and_file(tmp_path, template, why):
    cfg = tmp_path / "node.toml"
    cfg.write_text(f"[derive]\nseries_description = '{template}'\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "derive.series_description" in str(err.value) and str(cfg) in str(err.value)
    assert why in str(err.value)


def test_replaced_and_invalid_numbering_keys_are_refused_naming_key_and_file(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text("[derive]\ndescription_suffix = ' [denoised]'\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "derive" in str(err.value) and "series_description" in str(err.value) and str(cfg) in str(err.value)
    cfg.write_text("[derive]\nseries_number_offset = 500\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "derive.series_number_offset" in str(err.value) and "power of ten" in str(err.value)
    assert DeriveSettings(series_number_offset=100).series_number_offset == 100
