"""Statistics for the outcome figures, through maintained libraries: Wilson intervals (SciPy),
Kaplan–Meier estimates, log-rank tests and reverse Kaplan–Meier follow-up (lifelines).

Times are in months = days / 30.4375 (the convention of examples/*/EXPECTED.md).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

DAYS_PER_MONTH = 30.4375


def load_libraries() -> None:
    """Import lifelines and SciPy now (about 3 s) rather than on the first outcomes request. They
    are imported lazily so that CLI commands which compute no statistics start fast."""
    import lifelines  # noqa: F401
    import scipy.stats  # noqa: F401


def proportion(k: int, n: int) -> dict[str, Any]:
    """``{count, n, rate, ci95}`` with the Wilson score interval (scipy.stats.binomtest(...).
    proportion_ci(method="wilson")); ``rate`` and ``ci95`` are None when ``n`` is 0."""
    if n == 0:
        return {"count": k, "n": 0, "rate": None, "ci95": None}
    low, high = _wilson(k, n)
    return {"count": k, "n": n, "rate": round(k / n, 4), "ci95": [low, high]}


@functools.lru_cache(maxsize=4096)
def _wilson(k: int, n: int) -> tuple[float, float]:
    """The Wilson score 95 % interval of k/n, rounded to 4 decimals (SciPy; computed once per (k, n):
    binomtest also computes its p-value, the cost of a report's hundreds of proportions)."""
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return round(float(ci.low), 4), round(float(ci.high), 4)


@dataclass(frozen=True)
class SurvivalData:
    """Durations in months and event flags (1 = event, 0 = censored); ``excluded``: patients left
    out of the analysis, counted by reason (nothing is dropped in silence)."""

    durations: list[float]
    events: list[int]
    excluded: dict[str, int] = field(default_factory=dict)


def km_at(data: SurvivalData, t: float) -> dict[str, Any]:
    """Kaplan–Meier survival at ``t`` months with its 95 % CI (lifelines' exponential Greenwood
    interval), the number at risk, events and the median survival (None when not reached)."""
    n = len(data.durations)
    excluded = dict(sorted(data.excluded.items()))
    if n == 0:
        return {"n": 0, "events": 0, "at": t, "survival": None, "ci95": None, "median_months": None, "excluded": excluded}
    from lifelines import KaplanMeierFitter

    kmf = KaplanMeierFitter().fit(data.durations, data.events)
    s = float(kmf.survival_function_at_times(t).iloc[0])
    ci = kmf.confidence_interval_survival_function_
    upto = ci[ci.index <= t]
    lo, hi = (float(upto.iloc[-1, 0]), float(upto.iloc[-1, 1])) if len(upto) else (1.0, 1.0)
    median = kmf.median_survival_time_
    return {"n": n, "events": int(sum(data.events)), "at": t, "survival": round(s, 4),
            "ci95": [round(_nan0(lo), 4), round(_nan0(hi), 4)],
            "median_months": None if math.isinf(median) or math.isnan(median) else round(float(median), 2),
            "excluded": excluded}


def _nan0(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def logrank(groups: dict[str, SurvivalData]) -> dict[str, Any] | None:
    """Log-rank test across the strata (lifelines.statistics.multivariate_logrank_test); None with
    fewer than two non-empty strata."""
    groups = {k: v for k, v in groups.items() if v.durations}
    if len(groups) < 2:
        return None
    from lifelines.statistics import multivariate_logrank_test

    durations, events, labels = [], [], []
    for name, d in groups.items():
        durations += d.durations
        events += d.events
        labels += [name] * len(d.durations)
    res = multivariate_logrank_test(durations, labels, events)
    return {"test": "log-rank", "strata": sorted(groups), "chi2": round(float(res.test_statistic), 4),
            "df": len(groups) - 1, "p": round(float(res.p_value), 4)}


def reverse_km_median(data: SurvivalData) -> float | None:
    """Median follow-up by the reverse Kaplan–Meier method (Schemper & Smith 1996): censoring is
    the event, deaths/events are censored. None when not reached."""
    if not data.durations:
        return None
    from lifelines import KaplanMeierFitter

    kmf = KaplanMeierFitter().fit(data.durations, [1 - e for e in data.events])
    m = kmf.median_survival_time_
    return None if math.isinf(m) or math.isnan(m) else round(float(m), 2)


def km_curve(data: SurvivalData) -> tuple[list[float], list[float], list[float], list[float]]:
    """The step function (times, survival, lower, upper) of a Kaplan–Meier fit, for plotting."""
    from lifelines import KaplanMeierFitter

    kmf = KaplanMeierFitter().fit(data.durations, data.events)
    sf = kmf.survival_function_
    ci = kmf.confidence_interval_survival_function_
    return (list(map(float, sf.index)), list(map(float, sf.iloc[:, 0])), list(map(float, ci.iloc[:, 0])),
            list(map(float, ci.iloc[:, 1])))


def heterogeneity(counts: dict[str, tuple[int, int]]) -> dict[str, Any] | None:
    """Whether a rate differs across sites: Pearson's chi-square test of independence on the
    sites x (with, without) table (scipy.stats.chi2_contingency; no continuity correction beyond
    SciPy's default for 2 x 2). ``counts`` maps a site to (patients with the outcome, patients).
    None with fewer than two sites; ``p`` None when the outcome is constant (the test is undefined)."""
    sites = [s for s, (_, n) in counts.items() if n > 0]
    if len(sites) < 2:
        return None
    from scipy.stats import chi2_contingency

    table = [[counts[s][0], counts[s][1] - counts[s][0]] for s in sites]
    out: dict[str, Any] = {"test": "chi-square test of independence (sites x outcome)", "sites": sites,
                           "df": len(sites) - 1, "chi2": None, "p": None}
    if all(row[0] == 0 for row in table) or all(row[1] == 0 for row in table):
        return out
    res = chi2_contingency(table)
    out.update(chi2=round(float(res.statistic), 4), p=round(float(res.pvalue), 4),
               min_expected=round(float(res.expected_freq.min()), 2))
    return out
