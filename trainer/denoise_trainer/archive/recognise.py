"""Which series of an archive are LD, HD and REF: each series' names and thresholds, then its dose relative to the
patient's other series of the same body part.

Why relative: absolute doses differ between scanners, protocols and patient sizes, so no default threshold fits a
site, but within one patient and body part the reduced-dose series is plainly the one at a fraction of the other's
dose (a quarter, a half). CTDIvol is compared where the series carry it (it includes kVp and pitch), else the
exposure in mAs. Names in SeriesDescription and the site's own patterns win over the dose (a conflict is logged);
a name found only in ProtocolName, often the protocol's and shared by both doses, gives way to the dose.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from denoise_trainer.archive.domain import PROTOCOL, DomainRules

log = logging.getLogger(__name__)

RELATIVE = "relative dose"


@dataclass(frozen=True)
class SeriesFacts:
    """What recognition reads of one series (headers only)."""

    uid: str
    patient_id: str
    body_part: str | None
    description: str
    protocol: str
    mas: float | None
    ctdivol: float | None

    def describe(self) -> str:
        """One line for logs and the scan's list of unknown series."""
        dose = ", ".join(
            f"{v:g} {unit}" for v, unit in ((self.ctdivol, "mGy CTDIvol"), (self.mas, "mAs")) if v is not None
        )
        return f"patient {self.patient_id} {self.body_part or '?'}: {self.description!r} ({dose or 'no dose tags'})"


@dataclass(frozen=True)
class Decision:
    """A series' domain (None: unknown) and the rule that decided it."""

    domain: str | None
    rule: str


def recognise(series: Iterable[SeriesFacts], rules: DomainRules, domain: str | None = None) -> dict[str, Decision]:
    """series UID → Decision for a whole archive (the relative rule needs each patient's series together)."""
    facts = list(series)
    decided = {f.uid: Decision(*rules.classify(f.description, f.mas, domain, f.protocol, f.ctdivol)) for f in facts}
    if domain is None and rules.relative:
        groups: dict[tuple[str, str], list[SeriesFacts]] = defaultdict(list)
        for f in facts:
            groups[(f.patient_id, f.body_part or "")].append(f)
        for key in sorted(groups):
            _relative(groups[key], decided, rules)
    return decided


def _doses(group: list[SeriesFacts], decided: dict[str, Decision]) -> tuple[dict[str, float], str]:
    """The group's comparable doses: CTDIvol where at least as many series carry it as mAs, else mAs. REF series are
    left out (not an acquisition)."""
    physical = [f for f in group if decided[f.uid].domain != "REF"]
    ctdi = {f.uid: f.ctdivol for f in physical if f.ctdivol}
    mas = {f.uid: f.mas for f in physical if f.mas}
    return (ctdi, "CTDIvol") if ctdi and len(ctdi) >= len(mas) else (mas, "mAs")


def _relative(group: list[SeriesFacts], decided: dict[str, Decision], rules: DomainRules) -> None:
    """Decide the group's open series by their dose relative to its highest one; a series at one dose level only
    (one series, or several reconstructions of one acquisition) says nothing and stays as it is."""
    doses, quantity = _doses(group, decided)
    if len(doses) < 2:
        return
    top = max(doses.values())
    if min(doses.values()) > rules.ld_max_ratio * top:
        return
    for f in group:
        if f.uid not in doses:
            continue
        ratio = doses[f.uid] / top
        found = "LD" if ratio <= rules.ld_max_ratio else "HD" if ratio >= rules.hd_min_ratio else None
        current = decided[f.uid]
        if current.domain is None or current.rule == PROTOCOL:
            if found is None:
                log.info("scan: %s is at %.2f of the highest %s: neither LD nor HD", f.describe(), ratio, quantity)
                continue
            if current.domain not in (None, found):
                log.info(
                    "scan: %s: ProtocolName says %s, the dose says %s; the dose wins",
                    f.describe(),
                    current.domain,
                    found,
                )
            decided[f.uid] = Decision(found, f"{RELATIVE} ({quantity})")
        elif found is not None and current.domain != found:
            log.warning(
                "scan: %s is named %s (%s) but its %s is %.2f of the patient's highest; the name is kept",
                f.describe(),
                current.domain,
                current.rule,
                quantity,
                ratio,
            )
