"""How far a table's delta stands out from the noise of its seeds.

Each row of an ablation table is the mean over its seeds. A delta between two rows is the
difference of two means, whose standard error is sqrt(s1^2 / n1 + s2^2 / n2) (s: the
std over a row's seeds, n: their number). A delta smaller than NOISE_FACTOR standard
errors is marked ~ ("within noise"): the seeds do not tell it from zero. A row with one
seed has no std, so its deltas carry no standard error and no mark: nothing is known of
their noise.
"""

from __future__ import annotations

import math
from typing import Optional

NOISE_FACTOR = 2.0  # about 95 % of a normal difference of means lies within 2 standard errors
WITHIN = "~"


def delta_se(rec: dict, prev: dict) -> Optional[float]:
    """Standard error of rec's top-1 minus prev's; None unless both rows have 2+ seeds."""
    if rec["top1_std"] is None or prev["top1_std"] is None:
        return None
    return math.sqrt(rec["top1_std"] ** 2 / rec["seeds"] + prev["top1_std"] ** 2 / prev["seeds"])


def within_noise(delta: Optional[float], se: Optional[float]) -> Optional[bool]:
    """True when |delta| < NOISE_FACTOR standard errors; None when either is unknown."""
    if delta is None or se is None:
        return None
    return abs(delta) < NOISE_FACTOR * se


def delta_text(rec: dict, with_se: bool = True) -> str:
    """'+0.40 ± 0.30 ~': the delta, its standard error when known, and the mark."""
    if rec["delta_top1"] is None:
        return ""
    text = f"{rec['delta_top1']:+.2f}"
    if with_se and rec["delta_top1_se"] is not None:
        text += f" ± {rec['delta_top1_se']:.2f}"
    return text + (f" {WITHIN}" if rec["delta_within_noise"] else "")


def seeds_suffix(rec: dict, most: int) -> str:
    """' (n=2)' after a row's mean when it has fewer seeds than the table's fullest row."""
    return f" (n={rec['seeds']})" if 0 < rec["seeds"] < most else ""


def legend(recs: list[dict]) -> str:
    """The sentence under a table that says what its ± and ~ mean, for the seeds it has."""
    most = max((r["seeds"] for r in recs), default=0)
    if most <= 1:
        return ("One seed: the noise of each figure is unknown and no delta is marked; "
                "run more (--seeds 3) to see which deltas stand out from it.")
    fewer = " (n=k: a row with fewer finished)" if any(0 < r["seeds"] < most for r in recs) else ""
    return (f"Mean ± std over {most} seeds{fewer}. Δ ± its standard error √(s₁²/n₁ + s₂²/n₂); "
            f"{WITHIN} marks a Δ smaller than {NOISE_FACTOR:g} standard errors: within the seeds' noise, "
            "not an effect.")
