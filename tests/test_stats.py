"""convnn.stats: t quantiles against tabulated values, intervals that cover, clear errors."""

from __future__ import annotations

import math
import random

import pytest

from convnn import stats


@pytest.mark.parametrize(("p", "df", "table"), [
    (0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 4, 2.776), (0.975, 10, 2.228),
    (0.975, 30, 2.042), (0.95, 5, 2.015), (0.995, 3, 5.841), (0.025, 2, -4.303)])
def test_t_quantile_matches_the_table(p, df, table) -> None:
    assert stats.t_quantile(p, df) == pytest.approx(table, abs=1e-3)


def test_t_quantile_of_a_fractional_df_lies_between_its_neighbours() -> None:
    assert stats.t_quantile(0.975, 3) > stats.t_quantile(0.975, 3.5) > stats.t_quantile(0.975, 4)


def test_mean_interval_of_three_seeds() -> None:
    m = stats.mean_interval([40.0, 42.0, 44.0])
    assert (m.mean, m.n, m.df, m.std) == (42.0, 3, 2.0, 2.0)
    assert m.half_width == pytest.approx(4.303 * 2 / math.sqrt(3), abs=1e-3)
    assert "n = 3" in str(m)


def test_one_value_has_no_interval() -> None:
    m = stats.mean_interval([41.0])
    assert m.mean == 41.0 and math.isnan(m.low) and "no interval" in str(m)
    d = stats.welch([41.0], [40.0, 42.0])
    assert d.diff == 0.0 and math.isnan(d.low) and not d.excludes_zero


def test_welch_df_and_interval() -> None:
    a, b = [40.0, 42.0, 44.0], [30.0, 31.0, 32.0]
    d = stats.welch(a, b)
    va, vb = 4.0 / 3, 1.0 / 3  # variance of each mean
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    assert d.df == pytest.approx(df)
    assert d.diff == 11.0 and d.excludes_zero
    assert d.high - d.diff == pytest.approx(stats.t_quantile(0.975, df) * math.sqrt(va + vb))
    assert "df = " in str(d)
    assert not stats.welch([40.0, 42.0, 44.0], [41.0, 43.0, 45.0]).excludes_zero


def test_the_interval_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = random.Random(0)
    hits = 0
    for _ in range(2000):
        m = stats.mean_interval([rng.gauss(5.0, 2.0) for _ in range(4)])
        hits += m.low < 5.0 < m.high
    assert 0.93 < hits / 2000 < 0.97


def test_pooled_is_the_mean_over_repeats() -> None:
    p = stats.pooled([80.80, 80.93, 80.97, 81.45])
    assert p.mean == pytest.approx(81.0375) and p.n == 4 and p.low < 80.80 < p.high


def test_sampling_interval_is_wilsons_and_covers_about_95_percent() -> None:
    i = stats.sampling_interval(80.0, 10_000)
    assert (i.mean, i.n, i.method) == (80.0, 10_000, "Wilson")
    assert i.std == pytest.approx(0.4)  # sqrt(0.8 * 0.2 / 10,000), in points
    assert i.low == pytest.approx(79.2046, abs=1e-3) and i.high == pytest.approx(80.7724, abs=1e-3)
    edge = stats.sampling_interval(0.0, 100)  # Wilson stays inside [0, 100] and is not empty
    assert edge.low == pytest.approx(0.0, abs=1e-9) and 3.0 < edge.high < 4.0
    rng = random.Random(1)
    hits = 0
    for _ in range(1000):
        right = sum(rng.random() < 0.3 for _ in range(400))
        i = stats.sampling_interval(100.0 * right / 400, 400)
        hits += i.low < 30.0 < i.high
    assert 0.93 < hits / 1000 < 0.97
    assert "Wilson interval" in str(i)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: stats.sampling_interval(80.0, 0), "images must"),
    (lambda: stats.sampling_interval(80.0, 10.0), "images must"),
    (lambda: stats.sampling_interval(180.0, 100), "accuracy must"),
    (lambda: stats.mean_interval([]), "at least one value"),
    (lambda: stats.mean_interval([1.0, math.nan]), "nan"),
    (lambda: stats.mean_interval([1.0, 2.0], confidence=1.5), "confidence"),
    (lambda: stats.t_quantile(1.0, 3), "p must"),
    (lambda: stats.t_quantile(0.9, 0), "df must"),
    (lambda: stats.welch([], [1.0]), "welch")])
def test_bad_input_is_a_clear_error(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_mcnemar_exact_matches_a_hand_computed_case() -> None:
    # 10 discordant images, 8 against 2: P[X <= 2] = (1 + 10 + 45) / 1024, doubled
    a = [1] * 8 + [0] * 2 + [1] * 30 + [0] * 60
    b = [0] * 8 + [1] * 2 + [1] * 30 + [0] * 60
    t = stats.mcnemar(a, b)
    assert (t.only_a, t.only_b, t.images) == (8, 2, 100)
    assert t.p == pytest.approx(112 / 1024) and t.diff == pytest.approx(6.0)
    assert stats.mcnemar(b, a).p == t.p  # two-sided
    assert stats.mcnemar([1, 0], [1, 0]).p == 1.0  # no discordant image
    assert stats.mcnemar([1] * 5 + [0] * 5, [0] * 5 + [1] * 5).p == 1.0  # capped at 1
    with pytest.raises(ValueError, match="the same non-empty set of images"):
        stats.mcnemar([1, 0], [1])
    # a full test set: thousands of discordant images (2.0 ** n would overflow past 1,023)
    even = stats.mcnemar([1] * 1500 + [0] * 1500, [0] * 1500 + [1] * 1500)
    assert even.p == 1.0
    lopsided = stats.mcnemar([1] * 1700 + [0] * 1300, [0] * 1700 + [1] * 1300)
    assert 0.0 < lopsided.p < 1e-10  # 1700 vs 1300: z ≈ 7.3
