"""The protocol sampler of `synth --span` / `--ood`: it spans the issue's ranges, and the OOD protocol lies outside."""

from __future__ import annotations

import math

import numpy as np

from denoise_trainer.archive import kernels, physics, span


def _draw(ranges: span.ProtocolRanges, count: int = 300) -> list[span.ScanProtocol]:
    seqs = np.random.SeedSequence(11).spawn(count)
    return [draw_one(seq, ranges, ("abdomen", "chest")[i % 2]) for i, seq in enumerate(seqs)]


def draw_one(seq: np.random.SeedSequence, ranges: span.ProtocolRanges, body_part: str) -> span.ScanProtocol:
    return span.draw_protocol(seq, 512, None, ranges, body_part)


def _target_hd_noise(p: span.ScanProtocol, body_part: str) -> float:
    """Invert i0_for_noise: the HD noise the sampler aimed at."""
    gain = span.kernel_noise_gain(p.window)
    return (
        span.REFERENCE_NOISE_HU[body_part]
        * gain
        * math.sqrt(physics.DEFAULT_I0_HD / p.i0_hd)
        * (0.7 / p.pixel_spacing_mm)
    )


def test_the_span_covers_every_training_kernel_geometry_and_the_issues_ranges() -> None:
    drawn = _draw(span.SPAN)
    assert {p.window for p in drawn} == {k.name for k in kernels.TRAINING_KERNELS}
    assert {p.geometry for p in drawn} == {"parallel", "fan-a"}
    spacing = [p.pixel_spacing_mm for p in drawn]
    assert 0.5 <= min(spacing) < 0.55 and 0.85 < max(spacing) <= 0.9
    fractions = [p.ld_fraction for p in drawn]
    assert 0.1 <= min(fractions) < 0.13 and 0.47 < max(fractions) <= 0.5
    assert min(p.i0_hd * p.ld_fraction for p in drawn) >= span.MIN_I0 * (1 - 1e-9)
    aimed = [
        (i, p) for i, p in enumerate(drawn) if p.i0_hd * p.ld_fraction > span.MIN_I0 * (1 + 1e-9)
    ]  # floored draws are quieter than aimed
    assert len(aimed) > 0.8 * len(drawn)
    hd = np.array([_target_hd_noise(p, ("abdomen", "chest")[i % 2]) for i, p in aimed])
    ld = hd / np.sqrt([p.ld_fraction for _, p in aimed])
    assert 8.0 - 1e-6 <= hd.min() < 10 and 30 < hd.max() <= 35 + 1e-6, (hd.min(), hd.max())
    assert 15.0 - 1e-6 <= ld.min() < 18 and 60 < ld.max() <= 70 + 1e-6, (ld.min(), ld.max())


def test_the_ood_protocol_is_outside_every_training_range() -> None:
    drawn = _draw(span.OOD, 60)
    assert not {p.window for p in drawn} & {k.name for k in kernels.TRAINING_KERNELS}
    assert not {p.geometry for p in drawn} & set(span.SPAN.geometries)
    assert all(p.pixel_spacing_mm < 0.5 or p.pixel_spacing_mm > 0.9 for p in drawn)
    assert max(p.ld_fraction for p in drawn) < min(span.SPAN.ld_fraction)
    assert {p.detail for p in drawn} == {"rich"}
