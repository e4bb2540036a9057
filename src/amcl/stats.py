"""What paired runs can say: the t-interval of a mean paired difference, its p-value, Holm's correction across
the cells of a table, the two one-sided tests of equivalence, and the verdict a table prints.

The seeds of ``amcl compare`` pair runs exactly (same data, batches and augmentations; only the compared
setting differs), so the differences ``d_s = mode_s - baseline_s`` are the measurements: with n seeds, mean
``m``, sample standard deviation ``s`` and standard error ``se = s / sqrt(n)``, the 95% interval is
``m ± t(0.975, n - 1) * se`` and the two-sided p-value of "no difference" is ``2 * P(T > |m| / se)`` (Student's
t with n - 1 degrees of freedom, from scipy). A verdict is:

* ``better`` / ``worse``: the (Holm-adjusted, when asked) p-value is below alpha, in the metric's direction;
* ``equivalent within ±M``: with an equivalence margin M, both one-sided tests reject a difference of M or more
  (TOST: the 90% interval lies inside (-M, M) at alpha 0.05);
* ``no difference detected``: neither. It never means "as good as": the interval says how large a difference
  the seeds could have missed.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

__all__ = ["PairedTest", "holm", "paired_test", "verdict"]

#: The confidence of the reported intervals and the tests' level.
CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE


@dataclass(frozen=True)
class PairedTest:
    """The paired t-test of ``n`` differences: ``mean``, sample ``std``, the ``low``..``high`` interval at
    :data:`CONFIDENCE`, the two-sided ``p`` of "no difference" and, with a margin, ``equivalence_p`` (the
    larger of the two one-sided p-values). Fields the data cannot give (fewer than two seeds) are None."""

    n: int
    mean: float | None
    std: float | None
    low: float | None
    high: float | None
    p: float | None
    equivalence_p: float | None = None


def _student_t():
    from scipy.stats import t  # scipy comes with scikit-learn

    return t


def paired_test(differences: Sequence[float], margin: float | None = None,
                confidence: float = CONFIDENCE) -> PairedTest:
    """The t-interval and p-values of the mean of ``differences`` (see the module docstring); ``margin`` M (> 0,
    in the differences' units) adds the TOST p-value of |mean| < M. Identical differences (zero spread) give a
    zero-width interval, p = 1 if they are all 0 and p = 0 otherwise."""
    n = len(differences)
    if n == 0:
        return PairedTest(0, None, None, None, None, None)
    mean = statistics.fmean(differences)
    if n < 2:
        return PairedTest(1, mean, None, None, None, None)
    std = statistics.stdev(differences)
    se = std / math.sqrt(n)
    t = _student_t()
    df = n - 1
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
        equivalence = None if margin is None else (0.0 if abs(mean) < margin else 1.0)
        return PairedTest(n, mean, 0.0, mean, mean, p, equivalence)
    half = float(t.ppf(0.5 + confidence / 2, df)) * se
    p = float(2 * t.sf(abs(mean) / se, df))
    equivalence = None
    if margin is not None:
        above = float(t.sf((mean + margin) / se, df))  # H0: mean <= -M
        below = float(t.cdf((mean - margin) / se, df))  # H0: mean >= +M
        equivalence = max(above, below)
    return PairedTest(n, mean, std, mean - half, mean + half, p, equivalence)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None entries are not tests and stay None): the
    i-th smallest of m becomes ``max_{j <= i} min(1, (m - j) * p_(j))``, which keeps the chance of any false
    "better" or "worse" in the family at most alpha."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[index] = running
    return adjusted


def verdict(test: PairedTest, higher_is_better: bool, p: float | None = None,
            equivalence_p: float | None = None, margin_text: str | None = None, alpha: float = ALPHA) -> str:
    """The table's word for a paired difference: ``better``, ``worse``, ``equivalent within ±M`` or ``no
    difference detected`` (see the module docstring); ``p`` and ``equivalence_p`` replace the test's own
    (e.g. Holm-adjusted); ``margin_text`` is M as the table shows it."""
    p = test.p if p is None else p
    equivalence_p = test.equivalence_p if equivalence_p is None else equivalence_p
    if p is None or test.mean is None:
        return f"too few seeds ({test.n})"
    if p < alpha and test.mean != 0:
        return "better" if (test.mean > 0) == higher_is_better else "worse"
    if equivalence_p is not None and equivalence_p < alpha:
        return f"equivalent within ±{margin_text}"
    return "no difference detected"
