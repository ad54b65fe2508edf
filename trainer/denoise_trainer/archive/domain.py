"""The dose domain of one archived series: LD, HD or REF (noise-free reference), from its names or its dose.

Why a module of its own: these are the site's rules (name patterns, dose thresholds, the relative-dose ratios),
which a physicist tunes and the scan applies. Per series, the first rule that decides wins: an explicit domain, the
site's own name patterns, the built-in names in SeriesDescription, then in ProtocolName, then the dose thresholds;
otherwise None. What a series' dose says relative to the patient's other series is ``archive/recognise.py``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

DOMAINS = ("LD", "HD", "REF")

# Built-in names, case-insensitive, whole words: vendor, challenge (quarter/full dose, QD/FD) and site habits.
# "Standard" alone is a GE kernel name and "HEAD" is no HD, hence the word boundaries and "standard dose" only.
BUILTIN_LD = (
    r"\b(LD|QD|ULD|LDCT|low[- ]?dose|ultra[- ]?low[- ]?dose|quarter[- ]?dose|half[- ]?dose|1/[2-9][- ]?dose"
    r"|reduced(?:[- ]?dose)?|dose[- ]?reduced)\b|\b(?:[1-9]|[1-6]\d) ?% ?(?:dose|mAs)\b"
)
BUILTIN_HD = (
    r"\b(HD|FD|ND|full[- ]?dose|regular[- ]?dose|standard[- ]?dose|normal[- ]?dose|high[- ]?dose|routine)\b"
    r"|\b100 ?% ?(?:dose|mAs)\b"
)
BUILTIN_REF = r"noise[- ]?free|\bREF\b"

# Rules, as ``Decision.rule`` and the scan's summary name them.
EXPLICIT = "explicit (--domain)"
SITE_NAME = "site name (--rules)"
DESCRIPTION = "name in SeriesDescription"
PROTOCOL = "name in ProtocolName"
MAS_THRESHOLD = "mAs threshold"
CTDI_THRESHOLD = "CTDIvol threshold"
UNKNOWN = "unknown"


def _compile(patterns: dict[str, str | None]) -> dict[str, re.Pattern[str]]:
    return {d: re.compile(p, re.IGNORECASE) for d, p in patterns.items() if p}


@dataclass
class DomainRules:
    """How a series' names and dose tell LD, HD and REF (noise-free reference) apart.

    ``ld``/``hd``/``ref`` are the built-in patterns (None turns one off); ``site_*`` are a site's own, tried first,
    in SeriesDescription and ProtocolName. Dose thresholds are off unless set (sites differ too much for a
    default): at most ``ld_max_mas`` mAs (``ld_max_ctdivol`` mGy) is LD, at least ``hd_min_mas`` is HD. Within a
    patient and body part (``relative``), a series at ≤ ``ld_max_ratio`` of the highest dose is LD and one at
    ≥ ``hd_min_ratio`` of it is HD.
    """

    ld: str | None = BUILTIN_LD
    hd: str | None = BUILTIN_HD
    ref: str | None = BUILTIN_REF
    site_ld: str | None = None
    site_hd: str | None = None
    site_ref: str | None = None
    ld_max_mas: float | None = None
    hd_min_mas: float | None = None
    ld_max_ctdivol: float | None = None
    hd_min_ctdivol: float | None = None
    relative: bool = True
    ld_max_ratio: float = 0.6
    hd_min_ratio: float = 0.85
    modalities: tuple[str, ...] = ("CT",)
    _builtin: dict[str, re.Pattern[str]] = field(init=False, repr=False, compare=False)
    _site: dict[str, re.Pattern[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for low, high, unit in (
            ("ld_max_mas", "hd_min_mas", "mAs"),
            ("ld_max_ctdivol", "hd_min_ctdivol", "mGy"),
        ):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo >= hi:
                raise ValueError(f"{low} ({lo} {unit}) must be below {high} ({hi} {unit})")
        if not 0 < self.ld_max_ratio < self.hd_min_ratio <= 1:
            raise ValueError(f"need 0 < ld_max_ratio ({self.ld_max_ratio}) < hd_min_ratio ({self.hd_min_ratio}) <= 1")
        self._builtin = _compile({"REF": self.ref, "LD": self.ld, "HD": self.hd})
        self._site = _compile({"REF": self.site_ref, "LD": self.site_ld, "HD": self.site_hd})

    @staticmethod
    def _match(compiled: dict[str, re.Pattern[str]], text: str) -> str | None:
        """REF wins (a reference may name the dose it stands for); LD and HD together are ambiguous (None)."""
        hits = [d for d, rx in compiled.items() if rx.search(text or "")]
        if "REF" in hits:
            return "REF"
        return hits[0] if len(hits) == 1 else None

    def from_description(self, description: str) -> str | None:
        """The built-in names' verdict on one text."""
        return self._match(self._builtin, description)

    def from_names(self, description: str, protocol: str = "") -> tuple[str | None, str]:
        """(domain, rule): the site's patterns in either name, then the built-in ones in the description, then in
        the protocol name (which often names the protocol rather than the dose, so the dose may overrule it)."""
        for text in (description, protocol):
            found = self._match(self._site, text)
            if found is not None:
                return found, SITE_NAME
        found = self._match(self._builtin, description)
        if found is not None:
            return found, DESCRIPTION
        found = self._match(self._builtin, protocol)
        return (found, PROTOCOL) if found is not None else (None, UNKNOWN)

    def from_exposure(self, mas: float | None) -> str | None:
        return self._threshold(mas, self.ld_max_mas, self.hd_min_mas)

    def from_dose(self, mas: float | None, ctdivol: float | None) -> tuple[str | None, str]:
        """(domain, rule) from the absolute thresholds: CTDIvol (dose to the phantom) first, then mAs."""
        found = self._threshold(ctdivol, self.ld_max_ctdivol, self.hd_min_ctdivol)
        if found is not None:
            return found, CTDI_THRESHOLD
        found = self._threshold(mas, self.ld_max_mas, self.hd_min_mas)
        return (found, MAS_THRESHOLD) if found is not None else (None, UNKNOWN)

    @staticmethod
    def _threshold(value: float | None, ld_max: float | None, hd_min: float | None) -> str | None:
        if value is None:
            return None
        if ld_max is not None and value <= ld_max:
            return "LD"
        if hd_min is not None and value >= hd_min:
            return "HD"
        return None

    def classify(
        self,
        description: str,
        mas: float | None,
        domain: str | None = None,
        protocol: str = "",
        ctdivol: float | None = None,
    ) -> tuple[str | None, str]:
        """(domain, which rule decided) for one series on its own: explicit > names > thresholds > unknown."""
        if domain is not None:
            return domain, EXPLICIT
        found, rule = self.from_names(description, protocol)
        if found is not None:
            return found, rule
        return self.from_dose(mas, ctdivol)


def _number(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    return None if value in (None, "") else float(value)


def exposure_mas(ds: Dataset) -> float | None:
    """Exposure in mAs: Exposure (0018,1152), else ExposureInuAs / 1000, else XRayTubeCurrent × ExposureTime / 1000."""
    try:
        if (mas := _number(ds, "Exposure")) is not None:
            return mas
        if (uas := _number(ds, "ExposureInuAs")) is not None:
            return uas / 1000.0
        current, time_ms = _number(ds, "XRayTubeCurrent"), _number(ds, "ExposureTime")
        if current is not None and time_ms is not None:
            return current * time_ms / 1000.0
    except (TypeError, ValueError) as exc:
        log.debug("unreadable exposure tags: %s", exc)
    return None


def ctdivol_mgy(ds: Dataset) -> float | None:
    """CTDIvol (0018,9345) in mGy; None when absent, unreadable or not positive."""
    try:
        value = _number(ds, "CTDIvol")
    except (TypeError, ValueError) as exc:
        log.debug("unreadable CTDIvol: %s", exc)
        return None
    return value if value is not None and value > 0 else None
