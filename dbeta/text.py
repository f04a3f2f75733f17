"""Report text handling shared by data preparation, the training collator and N3S.

The machine reports of MIMIC-IV-ECG are spread over the columns ``report_0`` ... ``report_17`` of
``machine_measurements.csv``. D-BETA joins the non-empty ones with single spaces (the fairseq-signals
preprocessing) and normalises the result as described in the specification (section 3).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

NUM_MIMIC_REPORT_COLUMNS = 18
MIMIC_REPORT_COLUMNS: tuple[str, ...] = tuple(f"report_{index}" for index in range(NUM_MIMIC_REPORT_COLUMNS))

_WHITESPACE = re.compile(r"\s+")


def _is_missing(value: Any) -> bool:
    """True for None, NaN (pandas' empty CSV cell) and strings made only of whitespace."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def join_report_lines(lines: Iterable[Any]) -> str:
    """Join the non-empty report lines with single spaces.

    Empty cells (``None``, NaN, blank strings) are skipped and the whitespace inside each line is
    collapsed, so ``["Sinus rhythm", nan, "Normal ECG "]`` becomes ``"Sinus rhythm Normal ECG"``.
    Returns ``""`` when every line is empty.
    """
    kept = []
    for line in lines:
        if _is_missing(line):
            continue
        kept.append(_WHITESPACE.sub(" ", str(line)).strip())
    return " ".join(kept)


def normalize_report(text: str) -> str:
    """Normalise a report as the D-BETA collator does (specification, section 3).

    Lower-case, trim, replace ``"ekg"`` with ``"ecg"``, then strip the character sets ``"* "``,
    ``"=-"`` and ``"="`` from both ends, in that order.

    Example: ``"*** Sinus rhythm. Normal EKG"`` -> ``"sinus rhythm. normal ecg"``. As in the original,
    a space uncovered by a later strip stays: ``"Normal EKG ==="`` -> ``"normal ecg "``.
    """
    text = text.lower().strip().replace("ekg", "ecg")
    return text.strip("* ").strip("=-").strip("=")


def clean_mimic_report(lines: Iterable[Any]) -> str:
    """Join the report columns of one MIMIC-IV-ECG study and normalise the result."""
    return normalize_report(join_report_lines(lines))
