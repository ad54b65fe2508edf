"""How a derived series (and its quality report) is told apart in a PACS: its SeriesDescription and SeriesNumber.

**SeriesDescription** comes from the ``[derive] series_description`` template (placeholders: config/sections.py
DESCRIPTION_FIELDS). DICOM allows 64 characters (LO): the source's description is cut first, so what says how the
series was made (model, version, strength) is never lost.

**SeriesNumber** never collides among the numbers the node gives: every derivation of a source series (another
strength, model or version: another derivation key) gets a *variant* ``v`` (0, 1, 2, … recorded in the catalog,
store/catalog/derivations.py, so a retry of the same derivation keeps its number), and with ``B`` = ``[derive]
series_number_offset`` (a power of ten) and ``n`` the source's number::

    W0 = the smallest power of ten >= max(B, n + 1)          (n < W0: n is the number's last digits)
    W  = W0 * 10 ** (v // 4)                                 (4 variants per width, then one more digit)
    m  = 2 * (v % 4) + 1, and m + 1 for the report           (the leading digit: 1 … 8)
    number = m * W + n

So with B = 1000, source 2 gives 1002 and its report 2002 (the node's numbers before variants existed), a second
derivation 3002 / 4002, then 5002, 7002, 10002 …; source 1002 gives 11002 / 21002. The number is injective: its
digit count gives W (m * W + n lies in [W, 9W)), then n = number mod W and m = number // W, and W0 follows from n.
Every number is at least B, so sources numbered below B never meet a derived number. Sources without a number (or
a negative one) count as 0.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

log = logging.getLogger(__name__)

MAX_LO = 64  # characters of a DICOM LO value (SeriesDescription)
MAX_IS = 2**31 - 1  # the largest IS value (SeriesNumber)
VARIANTS_PER_WIDTH = 4


def _power_of_ten_above(value: int) -> int:
    width = 1
    while width <= value:
        width *= 10
    return width


def series_number(source_number: int | None, block: int, variant: int = 0, report: bool = False) -> int:
    """The SeriesNumber of derivation ``variant`` of the source series numbered ``source_number`` (of its quality
    report with ``report``); ValueError when it would not fit an IS value (a source derived some twenty times)."""
    if variant < 0:
        raise ValueError(f"variant {variant} < 0")
    n = max(0, int(source_number or 0))
    width = _power_of_ten_above(max(block - 1, n)) * 10 ** (variant // VARIANTS_PER_WIDTH)
    lead = 2 * (variant % VARIANTS_PER_WIDTH) + (2 if report else 1)
    number = lead * width + n
    if number > MAX_IS:
        raise ValueError(f"derivation {variant + 1} of source series {n} would be numbered {number}: too large")
    return number


def source_series_number(value: object) -> int:
    """The source's SeriesNumber as an int (0 when missing or not a number)."""
    try:
        return int(str(value).strip()) if value not in (None, "") else 0
    except (TypeError, ValueError):
        return 0


def _lo(text: str) -> str:
    """A LO value: no backslash (the value separator) or control characters."""
    return "".join(" " if ord(c) < 32 else c for c in text.replace("\\", "/"))


def series_description(template: str, values: Mapping[str, str], source: str, suffix: str = "") -> str:
    """The template filled in, then ``suffix``, in 64 characters: the {source} part is cut to make room, never the
    rest; only a template whose own text and values exceed 64 characters is cut at its end (and logged)."""
    fixed = _lo(template.format(**{**values, "source": ""}) + suffix)
    room = MAX_LO - len(fixed)
    if room < 0:
        log.warning("SeriesDescription %r exceeds %d characters without the source's description: cut", fixed, MAX_LO)
        return fixed[:MAX_LO].strip()
    cut = _lo(source)[:room].rstrip()
    return _lo(template.format(**{**values, "source": cut}) + suffix).strip()[:MAX_LO]
