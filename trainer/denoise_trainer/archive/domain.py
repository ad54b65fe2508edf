"""The dose domain of an archived series: LD, HD or REF (noise-free reference), from its description or exposure.

Why a module of its own: these are the site's rules (SeriesDescription patterns, exposure thresholds), which a
physicist tunes and the scan applies; first rule that decides wins: an explicit domain, then the description, then
the exposure, otherwise unknown (None) so ``denoise-node catalog list`` shows what to fix.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

DOMAINS = ("LD", "HD", "REF")


@dataclass
class DomainRules:
    """How a series' SeriesDescription or exposure tells LD, HD and REF (noise-free reference) apart.

    Patterns are case-insensitive regular expressions searched in the description; the defaults match the
    synthetic archive and common vendor/challenge names. Exposure thresholds are off unless set (sites differ
    in protocols too much for a default): at most ``ld_max_mas`` mAs is LD, at least ``hd_min_mas`` is HD.
    """

    ld: str = r"\b(LD|low[- ]?dose|quarter[- ]?dose)\b"
    hd: str = r"\b(HD|full[- ]?dose|regular[- ]?dose|routine)\b"
    ref: str = r"noise[- ]?free|\bREF\b"
    ld_max_mas: float | None = None
    hd_min_mas: float | None = None
    modalities: tuple[str, ...] = ("CT",)

    def __post_init__(self) -> None:
        if self.ld_max_mas is not None and self.hd_min_mas is not None and self.ld_max_mas >= self.hd_min_mas:
            raise ValueError(f"ld_max_mas ({self.ld_max_mas}) must be below hd_min_mas ({self.hd_min_mas})")
        self._compiled = {
            d: re.compile(p, re.IGNORECASE) for d, p in (("REF", self.ref), ("LD", self.ld), ("HD", self.hd))
        }

    def from_description(self, description: str) -> str | None:
        """REF wins (a reference may name the dose it stands for); LD and HD together are ambiguous (None)."""
        hits = [d for d, rx in self._compiled.items() if rx.search(description or "")]
        if "REF" in hits:
            return "REF"
        return hits[0] if len(hits) == 1 else None

    def from_exposure(self, mas: float | None) -> str | None:
        if mas is None:
            return None
        if self.ld_max_mas is not None and mas <= self.ld_max_mas:
            return "LD"
        if self.hd_min_mas is not None and mas >= self.hd_min_mas:
            return "HD"
        return None

    def classify(self, description: str, mas: float | None, domain: str | None = None) -> tuple[str | None, str]:
        """(domain, which rule decided): explicit argument > description > exposure > unknown."""
        if domain is not None:
            return domain, "explicit"
        found = self.from_description(description)
        if found is not None:
            return found, "description"
        found = self.from_exposure(mas)
        if found is not None:
            return found, "exposure"
        return None, "unknown"


def exposure_mas(ds: Dataset) -> float | None:
    """Exposure in mAs: Exposure (0018,1152), else ExposureInuAs / 1000, else XRayTubeCurrent × ExposureTime / 1000."""
    try:
        if ds.get("Exposure") not in (None, ""):
            return float(ds.Exposure)
        if ds.get("ExposureInuAs") not in (None, ""):
            return float(ds.ExposureInuAs) / 1000.0
        if ds.get("XRayTubeCurrent") not in (None, "") and ds.get("ExposureTime") not in (None, ""):
            return float(ds.XRayTubeCurrent) * float(ds.ExposureTime) / 1000.0
    except (TypeError, ValueError) as exc:
        log.debug("unreadable exposure tags: %s", exc)
    return None
