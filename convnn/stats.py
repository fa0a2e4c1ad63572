"""Uncertainty for the book's comparisons: a mean with its 95 % interval over seeds or
repeated runs, and the difference of two means with Welch's interval.

The book compares variants that ran with a few seeds (the laptop study) or that the authors
ran more than once (their logs hold repeats of some settings). A mean without its interval
says nothing about whether two variants differ, so every comparison goes through here.

Intervals are Student-t intervals: for one mean, ``mean ± t(df) · s / √n`` with
``df = n − 1``; for a difference of two means, Welch's interval, whose degrees of freedom come
from the Welch–Satterthwaite formula and are reported with it. With three seeds ``t`` is 4.30,
so a 95 % interval is wide; that is what three seeds allow. A single value has no interval
(``low`` and ``high`` are ``nan``).

No SciPy: the t quantile comes from the regularised incomplete beta function.

Example:
    >>> from convnn import stats
    >>> m = stats.mean_interval([40.0, 42.0, 44.0])
    >>> round(m.mean, 1), round(m.low, 2), round(m.high, 2), m.df
    (42.0, 37.03, 46.97, 2.0)
    >>> d = stats.welch([40.0, 42.0, 44.0], [30.0, 31.0, 32.0])
    >>> round(d.diff, 1), d.excludes_zero
    (11.0, True)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist

__all__ = ["Difference", "Interval", "McNemar", "mcnemar", "mean_interval", "pooled",
           "sampling_interval", "t_quantile", "welch"]


def _betacf(a: float, b: float, x: float) -> float:
    # continued fraction of the incomplete beta function (modified Lentz)
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` (> 0, not necessarily whole) degrees of
    freedom; ``t_quantile(0.975, 2)`` is 4.303."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p!r}")
    if not df > 0:
        raise ValueError(f"df must be positive, got {df!r}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def _values(values: Iterable[float], what: str) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError(f"{what} needs at least one value, got none")
    if any(math.isnan(v) for v in out):
        raise ValueError(f"{what} got a nan among its values: {out}")
    return out


def _var(v: list[float]) -> float:
    m = sum(v) / len(v)
    return sum((x - m) ** 2 for x in v) / (len(v) - 1)


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values with its two-sided interval (``low``, ``high``) at
    ``confidence``; ``std`` is the sample standard deviation and ``df = n − 1``; ``method``
    names the interval (``"t"``, or ``"Wilson"`` for :func:`sampling_interval`)."""

    mean: float
    low: float
    high: float
    n: int
    std: float
    df: float
    confidence: float = 0.95
    method: str = "t"

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:.1f} (n = 1, no interval)"
        return (f"{self.mean:.1f} [{self.low:.1f}, {self.high:.1f}] "
                f"(n = {self.n}, {self.confidence:.0%} {self.method} interval)")


@dataclass(frozen=True)
class Difference:
    """The difference ``mean(a) − mean(b)`` with Welch's interval; ``df`` is the
    Welch–Satterthwaite degrees of freedom (shown with every interval)."""

    diff: float
    low: float
    high: float
    df: float
    n_a: int
    n_b: int
    confidence: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely on one side of zero."""
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        if math.isnan(self.low):
            return f"{self.diff:+.1f} (too few values for an interval)"
        return (f"{self.diff:+.1f} [{self.low:+.1f}, {self.high:+.1f}] "
                f"(Welch, df = {self.df:.1f})")


def mean_interval(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """The mean of ``values`` with its Student-t interval (``df = n − 1``)."""
    v = _values(values, "mean_interval")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    n, mean = len(v), sum(v) / len(v)
    if n < 2:
        return Interval(mean, math.nan, math.nan, 1, 0.0, 0.0, confidence)
    std = math.sqrt(_var(v))
    half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, std, float(n - 1), confidence)


def welch(a: Iterable[float], b: Iterable[float], confidence: float = 0.95) -> Difference:
    """``mean(a) − mean(b)`` with Welch's t interval (unequal variances). Each side needs
    two values or more for an interval; otherwise ``low``/``high``/``df`` are ``nan``."""
    va, vb = _values(a, "welch (a)"), _values(b, "welch (b)")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    diff = sum(va) / len(va) - sum(vb) / len(vb)
    if len(va) < 2 or len(vb) < 2:
        return Difference(diff, math.nan, math.nan, math.nan, len(va), len(vb), confidence)
    sa, sb = _var(va) / len(va), _var(vb) / len(vb)
    se = math.sqrt(sa + sb)
    if se == 0.0:
        return Difference(diff, diff, diff, math.inf, len(va), len(vb), confidence)
    df = (sa + sb) ** 2 / (sa**2 / (len(va) - 1) + sb**2 / (len(vb) - 1))
    half = t_quantile(0.5 + confidence / 2, df) * se
    return Difference(diff, diff - half, diff + half, df, len(va), len(vb), confidence)


def sampling_interval(accuracy: float, images: int, confidence: float = 0.95) -> Interval:
    """The test set's sampling error of **one** run's accuracy (in %), measured on ``images``
    test images: the Wilson score interval of a binomial proportion.

    It is the least uncertainty a single run's number carries: another draw of the same number of
    test images from the same distribution would move the accuracy by about this much. It does
    not cover seed-to-seed spread, which needs repeated runs (:func:`mean_interval`). ``n`` of
    the result is ``images`` and ``std`` the binomial standard error (in points).

    Example:
        >>> i = sampling_interval(80.0, 10_000)
        >>> round(i.low, 2), round(i.high, 2)
        (79.2, 80.77)
    """
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ValueError(f"images must be a positive int (the number of test images), "
                         f"got {images!r}")
    if not 0.0 <= accuracy <= 100.0:
        raise ValueError(f"accuracy must be a percentage in [0, 100], got {accuracy!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    p, n = accuracy / 100.0, images
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(accuracy, 100.0 * (centre - half), 100.0 * (centre + half), n,
                    100.0 * math.sqrt(p * (1 - p) / n), math.inf, confidence, "Wilson")


def pooled(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """A pooled baseline: the mean and interval over repeated runs of one setting (e.g. the
    authors' several Conv2d VGG-11 CIFAR-10 runs), instead of picking one of them."""
    return mean_interval(values, confidence)


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test of two classifiers scored on the same images: ``only_a`` images
    only ``a`` classifies correctly, ``only_b`` only ``b`` (the discordant pairs), out of
    ``images``; ``p`` is the two-sided exact binomial p-value of the discordant counts."""

    only_a: int
    only_b: int
    images: int
    p: float

    @property
    def diff(self) -> float:
        """Accuracy of ``a`` minus that of ``b``, in points."""
        return 100.0 * (self.only_a - self.only_b) / self.images

    def __str__(self) -> str:
        return (f"{self.diff:+.1f} points; {self.only_a} vs {self.only_b} discordant of "
                f"{self.images} images, McNemar exact p = {self.p:.2g}")


def mcnemar(correct_a: Iterable, correct_b: Iterable) -> McNemar:
    """McNemar's exact test, paired over the images both models were scored on.

    Args:
        correct_a, correct_b: per image, whether model ``a`` (``b``) classified it correctly
            (bools or 0/1), in the same image order.

    The images both classify alike carry no information on which is better. Under the null
    hypothesis of equal accuracy each of the ``n = only_a + only_b`` discordant images is
    ``a``'s with probability 1/2, so ``p = min(1, 2 · P[X ≤ min(only_a, only_b)])`` for
    ``X ~ Binomial(n, 1/2)`` (``p = 1`` when ``n = 0``).

    Example:
        >>> t = mcnemar([1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0])
        >>> t.only_a, t.only_b, t.p
        (5, 0, 0.0625)
    """
    a, b = [bool(x) for x in correct_a], [bool(x) for x in correct_b]
    if len(a) != len(b) or not a:
        raise ValueError(f"correct_a and correct_b must score the same non-empty set of images,"
                         f" got {len(a)} and {len(b)} values")
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    n, low = only_a + only_b, min(only_a, only_b)
    # integer division of exact integers: no float overflow at 10,000 test images
    tail = sum(math.comb(n, i) for i in range(low + 1)) / (1 << n) if n else 1.0
    return McNemar(only_a, only_b, len(a), min(1.0, 2.0 * tail))
