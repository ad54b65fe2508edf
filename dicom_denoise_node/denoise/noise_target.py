"""A noise target: blend each slice's generator output with its input so that about ``target_noise_hu`` of noise
remains, whatever the input's dose.

Why: a site's low-dose series span a wide range of doses (LD soft-tissue noise 15–70 HU), while "regular-dose
quality" is a noise level, about constant for a protocol (the scanner's automatic exposure control aims at one).
A generator that removes nearly all the noise, blended back as ``input + s · (output − input)`` with ``s = 1 −
target / level`` (the level measured on the input slice, ``conditioning_noise_hu``), leaves ``target / level`` of
the input's noise: about ``target`` HU of it, with the input's own noise texture (its kernel's), so the image
looks like a regular-dose image of that kernel instead of a smooth, "plastic" one. An input already at or below
the target passes unchanged (s = 0).

Approximate: the measured level reads within −5…+20 % of the true one (noise.py), and the output's noise is about
√(target² + residual²), where ``residual`` is what the generator itself gets wrong (small against the target for a
well-trained model: docs/model-card.md measures the result).
"""

from __future__ import annotations


def target_strength(level_hu: float, target_hu: float) -> float:
    """The per-slice strength that leaves about ``target_hu`` of noise in an input of ``level_hu`` (0 … 1)."""
    if target_hu <= 0 or level_hu <= target_hu:
        return 0.0 if target_hu > 0 else 1.0
    return 1.0 - target_hu / level_hu


def resolve_target(configured: float | None, strength: float, model_target: float) -> float:
    """The target in force (0 = none): the configuration's when set (0 turns the model's off), else the model's own
    unless a strength other than 1 was configured (the two set the same blend; the explicit one wins)."""
    if configured is not None:
        return float(configured)
    return 0.0 if strength != 1.0 else float(model_target)
