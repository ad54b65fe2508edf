"""Per-rule strength and model: for a routed series, one denoiser per derived series to make.

A routing rule may set its own ``strength`` and ``model`` (a model of the registry by name); a rule with
``fall_through`` lets the later rules that match the series make their own derived series too (which rules apply
is routing's answer, complete/routing.py ``series_rules``, handed in by the wiring). Every model a rule names is
loaded at start, so an unknown name stops the node there, naming the rule, rather than failing series later.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from dicom_denoise_node.config import Rule, Settings
from dicom_denoise_node.denoise.decode_process import DecoderProcess
from dicom_denoise_node.denoise.series import SeriesDenoiser
from dicom_denoise_node.model.registry import ModelError, load_model, resolve_model_path

log = logging.getLogger(__name__)

# (rule recorded for the series, its instances as (path, calling AE)) → the rules it is denoised for, in order.
SeriesRules = Callable[[str | None, Sequence[tuple[Path, str]]], list[Rule]]


def for_rule(
    base: SeriesDenoiser, rule: str, strength: float | None = None, named_model: bool = False
) -> SeriesDenoiser:
    """``base`` (its network, tiler and decoder shared) for a routing rule: the rule's strength, when set, replaces
    [model] strength and the model's own noise target (an explicit strength wins; config load refuses one beside
    [model] target_noise_hu); ``named_model``: the rule chose the model by name, which joins the UIDs' key."""
    variant = copy.copy(base)
    if strength is not None:
        variant.strength = strength
        variant.target_noise_hu = 0.0 if base.configured_target is None else float(base.configured_target)
    variant.derivation = replace(
        base.derivation,
        strength=variant.strength,
        target_noise_hu=variant.target_noise_hu,
        named_model=named_model,
        rule=rule,
    )
    return variant


class RuleDenoisers:
    """The default denoiser ([model]) and one per model the rules name, sharing one decoding child."""

    def __init__(self, default: SeriesDenoiser, by_model: dict[str, SeriesDenoiser], series_rules: SeriesRules) -> None:
        self.default, self.by_model, self.series_rules = default, by_model, series_rules

    def for_rule(self, rule: Rule, strength: float | None = None) -> SeriesDenoiser:
        """The rule's model at the rule's strength (``strength``, when given, wins: `denoise-node reprocess`)."""
        named = bool(rule.model) and rule.model != self.default.info.name
        base = self.by_model[rule.model] if named else self.default
        return for_rule(base, rule.name, strength if strength is not None else rule.strength, named_model=named)

    def for_series(
        self, rule_name: str | None, instances: Sequence[tuple[Path, str]], strength: float | None = None
    ) -> list[SeriesDenoiser]:
        """One denoiser per derived series the series gets: its rule's, then those of the rules it falls through
        to; a rule that would make the very same derivation as an earlier one (same key) adds nothing. With
        ``strength`` (a reprocess at that strength) only the series' own rule, at that strength."""
        rules = self.series_rules(rule_name, instances)
        if strength is not None:
            rules = rules[:1]
        chosen: dict[str, SeriesDenoiser] = {}
        for rule in rules:
            denoiser = self.for_rule(rule, strength)
            key = denoiser.derivation.uid_key
            if key in chosen:
                log.warning("rule %r makes the same derived series as rule %r (%s): made once",
                            rule.name, chosen[key].derivation.rule, key)  # fmt: skip
                continue
            chosen[key] = denoiser
        return list(chosen.values())

    def close(self) -> None:
        """End the decoding child (shared by every denoiser)."""
        self.default.close()


def load_rule_models(
    settings: Settings, default: SeriesDenoiser, device: str, decoder: DecoderProcess | None
) -> dict[str, SeriesDenoiser]:
    """Every model the active rules name (other than the default's), loaded on ``device``; a ModelError names the
    rule whose model cannot be loaded."""
    loaded: dict[str, SeriesDenoiser] = {}
    for rule in settings.active_rules:
        if not rule.model or rule.model == default.info.name or rule.model in loaded:
            continue
        try:
            network, info = load_model(resolve_model_path(settings.model.path, rule.model), device)
        except ModelError as exc:
            raise ModelError(f"rule {rule.name!r}: model {rule.model!r}: {exc}") from exc
        loaded[rule.model] = SeriesDenoiser(
            network,
            info,
            settings.model,
            settings.derive,
            device=device,
            guard=settings.guard,
            report=settings.report,
            decoder=decoder,
        )
        log.info("rule %s: model %s", rule.name, info.label)
    return loaded
