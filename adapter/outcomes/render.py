"""Renderings of an outcomes report: flat CSV rows and Kaplan–Meier plots (matplotlib; the
number-at-risk table under the curve comes from lifelines' ``add_at_risk_counts``)."""

from __future__ import annotations

import csv
import io
from typing import Any

from adapter.outcomes.cohort import PatientCourse
from adapter.outcomes.report import DEFINITIONS, STRATA, survival_data

CSV_COLUMNS = ("group", "figure", "value", "count", "n", "rate", "ci95_low", "ci95_high")


def _is_proportion(v: Any) -> bool:
    return isinstance(v, dict) and {"count", "n", "rate", "ci95"} <= set(v)


def flatten(figures: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any, Any, Any, Any, Any]]:
    """``(figure, value, count, n, rate, ci_low, ci_high)`` rows of one group's figures; the figure
    is the dotted path (``response.cr``); definitions are left out (they are in the JSON)."""
    rows: list[tuple[str, Any, Any, Any, Any, Any, Any]] = []
    for key, v in figures.items():
        if key == "definition":
            continue
        path = f"{prefix}{key}"
        if _is_proportion(v):
            ci = v["ci95"] or (None, None)
            rows.append((path, None, v["count"], v["n"], v["rate"], ci[0], ci[1]))
            rest = {k: x for k, x in v.items() if k not in ("count", "n", "rate", "ci95")}
            rows += flatten(rest, path + ".")
        elif isinstance(v, dict) and "survival" in v and "ci95" in v:
            ci = v["ci95"] or (None, None)
            rows.append((path, v["survival"], v.get("events"), v["n"], None, ci[0], ci[1]))
            rows += flatten({k: x for k, x in v.items() if k not in ("survival", "ci95", "n", "events")}, path + ".")
        elif isinstance(v, dict):
            rows += flatten(v, path + ".")
        elif isinstance(v, list):
            rows.append((path, ";".join(map(str, v)), None, None, None, None, None))
        elif v is not None:
            rows.append((path, v, None, None, None, None, None))
    return rows


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula (it starts with ``=``, ``+``, ``-``,
    ``@``, tab or carriage return; OWASP "CSV injection") gets a leading ``'``; numbers, and text
    that is a number (``-0.5``), are left as they are."""
    if not isinstance(value, str) or not value.startswith(_FORMULA):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value


def to_csv(report: dict[str, Any]) -> str:
    """The report as CSV (one row per figure, per site and pooled); text cells are made safe for
    spreadsheets (:func:`csv_safe`)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    groups = [*report["sites"].items(), ("pooled", report["pooled"])]
    for group, figures in groups:
        for row in flatten(figures):
            w.writerow([csv_safe(c) for c in (group, *row)])
    return out.getvalue()


def km_plot(cohort: list[PatientCourse], endpoint: str = "os", stratify: str | None = None, fmt: str = "png",
            timepoint: float | None = None) -> bytes:
    """A Kaplan–Meier plot (PNG or SVG bytes) of ``os`` or ``rfs``, one curve per stratum, with the
    number at risk under the axis. Raises ``ValueError`` for an unknown endpoint, stratum or format."""
    if endpoint not in ("os", "rfs"):
        raise ValueError(f"endpoint must be os or rfs, not {endpoint!r}")
    if fmt not in ("png", "svg"):
        raise ValueError(f"format must be png or svg, not {fmt!r}")
    if stratify is not None and stratify not in STRATA:
        raise ValueError(f"stratify must be one of {', '.join(STRATA)}, not {stratify!r}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts

    groups = {"all": cohort} if stratify is None else {
        g: [c for c in cohort if STRATA[stratify](c) == g] for g in sorted({STRATA[stratify](c) for c in cohort})}
    fig, ax = plt.subplots(figsize=(7, 5))
    fitters = []
    for name, members in groups.items():
        data = survival_data(members, endpoint)
        if not data.durations:
            continue
        kmf = KaplanMeierFitter(label=f"{name} (n={len(data.durations)})").fit(data.durations, data.events)
        kmf.plot_survival_function(ax=ax, ci_show=True, show_censors=True)
        fitters.append(kmf)
    if timepoint is not None:
        ax.axvline(timepoint, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("months from start of blinatumomab")
    ax.set_ylabel(f"{endpoint.upper()} probability")
    ax.set_title(DEFINITIONS[endpoint]["name"])
    ax.set_ylim(0, 1.05)
    if fitters:
        add_at_risk_counts(*fitters, ax=ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    plt.close(fig)
    return buf.getvalue()
