"""②a Routing: which received series the node denoises, by the ``[[rules]]`` of the config (first match wins).

Rules look at headers only (pixels are never read here) and run in the completion job, never on the C-STORE
path. A series is routed by the first of its instances that meets every condition of a rule; a series that no
instance routes is SKIPPED with the reason of each rule. `denoise-node rules test` shows the same decision.

Where a routed series goes is decided here too (:func:`destinations_for`); the send stage gets that function from
the wiring (pipeline.py), since stages do not import one another.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage

from dicom_denoise_node.config import DEFAULT_RULE, Destination, Rule, Settings

log = logging.getLogger(__name__)

# Everything a rule looks at: read with specific_tags, so a header read costs no pixel I/O.
HEADER_TAGS = [
    "SOPClassUID",
    "Modality",
    "ImageType",
    "SeriesDescription",
    "ProtocolName",
    "Exposure",
    "CTDIvol",
    "SeriesInstanceUID",
]


@dataclass(frozen=True)
class RuleMatch:
    """The decision for one instance or series: the rule that routes it, or why each rule did not."""

    rule: Rule | None
    reasons: dict[str, list[str]] = field(default_factory=dict)

    def explain(self) -> str:
        if self.rule is not None:
            return f"rule {self.rule.name!r} matches"
        return "; ".join(f"rule {name!r}: {', '.join(why)}" for name, why in self.reasons.items()) or "no rules"


def _number(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def image_type_matches(image_type: Sequence[str], wanted: Sequence[str]) -> bool:
    """Whether ``wanted`` leads ``image_type``, value by value; a wanted value may name alternatives separated by
    ``|`` (``AXIAL|VOLUME``: a classic CT's flavour, or an Enhanced CT's)."""
    if len(image_type) < len(wanted):
        return False
    return all(have in want.split("|") for have, want in zip(image_type, wanted, strict=False))


def rule_failures(rule: Rule, ds: Dataset, calling_aet: str = "") -> list[str]:
    """Every condition of ``rule`` that the header does not meet (empty: the rule matches)."""
    why: list[str] = []
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in (CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage):
        why.append(f"SOP class {sop_class or 'missing'} is not CT Image Storage")
    modality = str(ds.get("Modality", "") or "")
    if modality != "CT":
        why.append(f"Modality {modality or 'missing'} is not CT")
    image_type = [str(v).strip().upper() for v in (ds.get("ImageType") or [])]
    if not image_type_matches(image_type, rule.image_type):
        have, want = "\\".join(image_type) or "missing", "\\".join(rule.image_type)
        why.append(f"ImageType {have} does not start with {want}")
    for keyword, pattern in (("SeriesDescription", rule.series_description), ("ProtocolName", rule.protocol_name)):
        if pattern and not re.search(pattern, str(ds.get(keyword, "") or ""), re.IGNORECASE):
            why.append(f"{keyword} {str(ds.get(keyword, '') or '')!r} does not match /{pattern}/")
    if rule.calling_aets and calling_aet.strip() not in rule.calling_aets:
        why.append(f"calling AE {calling_aet or 'unknown'} not in {', '.join(rule.calling_aets)}")
    for keyword, limit, unit in (("Exposure", rule.max_exposure_mas, "mAs"), ("CTDIvol", rule.max_ctdivol, "mGy")):
        if limit is None:
            continue
        value = _number(ds, keyword)
        if value is None:
            why.append(f"no {keyword} to compare with {limit:g} {unit}")
        elif value > limit:
            why.append(f"{keyword} {value:g} {unit} above {limit:g}")
    return why


def match_dataset(rules: Sequence[Rule], ds: Dataset, calling_aet: str = "") -> RuleMatch:
    """The first rule whose every condition the header meets."""
    reasons: dict[str, list[str]] = {}
    for rule in rules:
        why = rule_failures(rule, ds, calling_aet)
        if not why:
            return RuleMatch(rule, reasons)
        reasons[rule.name] = why
    return RuleMatch(None, reasons)


def read_header(path: Path) -> Dataset:
    """Only the attributes rules use; raises InvalidDicomError / OSError for what is not a DICOM file."""
    return dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)


def match_file(rules: Sequence[Rule], path: Path, calling_aet: str = "") -> RuleMatch:
    try:
        ds = read_header(path)
    except (InvalidDicomError, OSError, ValueError) as exc:
        return RuleMatch(None, {"(file)": [f"cannot read {path.name}: {exc}"]})
    return match_dataset(rules, ds, calling_aet)


def classify_series(rules: Sequence[Rule], instances: Iterable[tuple[Path, str]]) -> RuleMatch:
    """Route a series by the first instance a rule matches; otherwise the reasons of its first instance.

    ``instances`` are (path, calling AE) in arrival order. Reading stops at the first match, so a normal series
    costs one header read; a series no rule matches costs one read per instance.
    """
    first: RuleMatch | None = None
    for path, calling_aet in instances:
        result = match_file(rules, path, calling_aet)
        if result.rule is not None:
            return result
        first = first or result
    return first or RuleMatch(None, {"(series)": ["no instances"]})


def rule_named(settings: Settings, name: str | None) -> Rule | None:
    """The active rule called ``name`` (the one recorded for a series), or None."""
    return next((r for r in settings.active_rules if r.name == name), None)


def series_rules(settings: Settings, rule_name: str | None, instances: Sequence[tuple[Path, str]]) -> list[Rule]:
    """The rules a routed series is denoised for, each making its own derived series: the one routing recorded,
    then, while the last one taken has ``fall_through``, every later rule that the series matches too. A recorded
    rule no longer in the config denoises with the [model] settings, under its name."""
    rules = settings.active_rules
    first = rule_named(settings, rule_name)
    if first is None:
        return [Rule(name=rule_name or DEFAULT_RULE.name)]
    chain = [first]
    for rule in rules[rules.index(first) + 1 :]:
        if not chain[-1].fall_through:
            break
        if classify_series([rule], instances).rule is not None:
            chain.append(rule)
    return chain


def describe_rule(rule: Rule, settings: Settings) -> str:
    """A rule and what its derived series is made with, for `rules test`: ``rule chest: s0.5, model NAME`` (the
    strength, or the [model] noise target as ``n12HU``; ``default model``: the [model] one)."""
    if rule.strength is not None:
        level = f"s{rule.strength:g}"
    elif settings.model.target_noise_hu:
        level = f"n{settings.model.target_noise_hu:g}HU"
    else:
        level = f"s{settings.model.strength:g}"
    model = f"model {rule.model}" if rule.model else "default model"
    return f"rule {rule.name}: {level}, {model}"


def destinations_for(settings: Settings, rule_name: str | None) -> list[Destination]:
    """Where a series routed by ``rule_name`` goes: the rule's destinations, or all of them."""
    rule = rule_named(settings, rule_name)
    if rule is None or not rule.destinations:
        return list(settings.destinations)
    return [d for d in settings.destinations if d.key in rule.destinations]


def originals_destinations_for(settings: Settings, rule_name: str | None) -> list[Destination]:
    """Where a series' originals are passed on as they came: its rule's ``forward_originals``; a series no rule
    denoises (a dose report: never denoised) goes to those of every rule."""
    rule = rule_named(settings, rule_name)
    rules = [rule] if rule is not None else settings.active_rules
    names = {name for r in rules for name in r.forward_originals}
    return [d for d in settings.destinations if d.key in names]
