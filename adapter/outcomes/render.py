"""Renderings of an outcomes report: flat CSV rows and Kaplan–Meier plots (matplotlib; the
number-at-risk table under the curve comes from lifelines' ``add_at_risk_counts``)."""

from __future__ import annotations

import csv
import io
import re
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
            timepoint: float | None = None, suppress_below: int | None = None) -> bytes:
    """A Kaplan–Meier plot (PNG or SVG bytes) of ``os`` or ``rfs``, one curve per stratum, with the
    number at risk under the axis. With ``suppress_below`` (the small-cell threshold, e.g. 5), a
    stratum size or number at risk from 1 to ``suppress_below`` − 1 is shown as ``<5``, as the
    outcome tables do (adapter/privacy.py). SVG text stays text. Raises ``ValueError`` for an
    unknown endpoint, stratum or format."""
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
    fig, ax = plt.subplots(figsize=(8, 5))
    fitters = []
    for name, members in groups.items():
        data = survival_data(members, endpoint)
        if not data.durations:
            continue
        n = len(data.durations)
        shown = f"<{suppress_below}" if suppress_below and 0 < n < suppress_below else str(n)
        kmf = KaplanMeierFitter(label=f"{name} (n={shown})").fit(data.durations, data.events)
        kmf.plot_survival_function(ax=ax, ci_show=True, show_censors=True)
        fitters.append(kmf)
    if timepoint is not None:
        ax.axvline(timepoint, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("months from start of blinatumomab")
    ax.set_ylabel(f"{endpoint.upper()} probability")
    ax.set_title(DEFINITIONS[endpoint]["name"])
    ax.set_ylim(0, 1.05)
    if fitters:  # one "at risk" row per stratum under the time axis (saved inside the picture below)
        add_at_risk_counts(*fitters, ax=ax, rows_to_show=["At risk"], fontsize=8)
        if suppress_below:
            for twin in fig.axes:
                if twin is not ax:
                    labels = [t.get_text() for t in twin.get_xticklabels()]
                    twin.set_xticks(twin.get_xticks(), [_suppress_counts(lbl, suppress_below) for lbl in labels],
                                    ha="right", fontsize=8)
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format=fmt, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _suppress_counts(label: str, threshold: int) -> str:
    """An at-risk tick label (one count per line, after the stratum name on the first tick) with
    counts from 1 to ``threshold`` − 1 replaced by ``<threshold``."""
    def one(line: str) -> str:
        m = re.search(r"(\d+)$", line)
        if m and not line[:m.start()].endswith("=") and 0 < int(m.group(1)) < threshold:
            return line[:m.start()] + f"<{threshold}"
        return line
    return "\n".join(one(line) for line in label.split("\n"))


def _fmt_prop(p: dict[str, Any]) -> str:
    if p.get("rate") is None:
        return f"{p['count']}/{p['n']}"
    lo, hi = p["ci95"]
    return f"{p['count']}/{p['n']} ({p['rate'] * 100:.1f}%, {lo * 100:.1f}–{hi * 100:.1f})"


def _fmt_km(k: dict[str, Any]) -> str:
    if k.get("survival") is None:
        return "–"
    lo, hi = k["ci95"]
    return f"{k['survival'] * 100:.1f}% ({lo * 100:.1f}–{hi * 100:.1f})"


def _fmt_share(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.1f}%"


def _fmt_vials(f: dict[str, Any]) -> str:
    v = f["exposure"]["vials"]
    if "standard_course" not in v:
        return "–" if "used" not in v else str(v["used"]["total"])
    return f"{v['used']['total']} / {v['standard_course']['total']} (-{_fmt_share(v['saving_share'])})"


def _fmt_cost(f: dict[str, Any]) -> str:
    usd = f["exposure"]["vials"].get("cost", {}).get("usd")
    return "–" if usd is None else f"{usd['used']:,.0f} / {usd['standard_course']:,.0f}"


def outcome_table(report: dict[str, Any], plan: dict[str, Any] | None = None) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The outcomes report as a table for people (the CLI and the dashboard): column names (each
    site, then ``pooled``) and rows of (figure, formatted cells). Proportions read
    ``count/n (rate %, 95% CI)``; KM estimates ``survival % (95% CI)`` at the report's time point;
    suppressed small cells keep their ``<5`` mark. With ``plan`` (the default plan's result,
    adapter/analysis/store_plan.py, at the same time point and suppression), every figure the
    plan defines is the plan's (computed from FHIR through the SQL on FHIR views); exposure, vials
    and cost, which it does not define, stay the report's."""
    groups = [*report["sites"].items(), ("pooled", report["pooled"])]
    scopes = {**plan["sites"], "pooled": plan["pooled"]} if plan else {}

    def planned(fid: str, fmt: Any, fallback: Any) -> Any:
        if not plan:
            return fallback
        return lambda f, scope: fmt(scopes[scope][fid]) if scope in scopes else "–"

    def km(k: dict[str, Any]) -> str:
        at = next(iter(k["at"].values()), None) if k.get("at") else None
        return _fmt_km(at or {})

    def months(k: dict[str, Any]) -> str:
        days = k.get("median_days")
        return "None" if not isinstance(days, (int, float)) else str(round(days / 30.4375, 2))

    def count(k: dict[str, Any]) -> str:
        return str(k["count"])

    def prop(fid: str, path: Any) -> Any:
        return planned(fid, _fmt_prop, lambda f, _s: _fmt_prop(path(f)))

    rows: list[tuple[str, Any]] = [
        ("patients", planned("n", count, lambda f, _s: str(f["n"]))),
        ("CR (CR MRD-neg + MRD clearance)", prop("cr", lambda f: f["response"]["cr"])),
        ("MRD-negative after blinatumomab", prop("mrd_negative_after", lambda f: f["response"]["mrd_negative_after"])),
        ("MRD clearance (MRD+ <1% at start)", prop("mrd_clearance",
                                                   lambda f: f["response"]["mrd_clearance_among_mrd_positive_below_1_percent"])),
        ("HSCT", prop("hsct", lambda f: f["hsct"])),
        ("CRS any grade", prop("crs_any", lambda f: f["toxicity"]["crs_any"])),
        ("CRS grade >= 3", prop("crs_grade_3_plus", lambda f: f["toxicity"]["crs_grade_3_plus"])),
        ("ICANS", prop("icans_any", lambda f: f["toxicity"]["icans_any"])),
        ("deaths", prop("deaths", lambda f: f["deaths"])),
        ("OS", planned("os", km, lambda f, _s: _fmt_km(f["survival"]["os"]))),
        ("RFS", planned("rfs", km, lambda f, _s: _fmt_km(f["survival"]["rfs"]))),
        ("median follow-up, reverse KM (months)", planned("follow_up", months,
                                                          lambda f, _s: str(f["follow_up"]["reverse_km_median_months"]))),
        ("outpatient infusion days", lambda f, _s: _fmt_share(f["exposure"]["outpatient_share"])),
        ("vials used / standard 28-day course", lambda f, _s: _fmt_vials(f)),
        ("drug cost USD, used / standard", lambda f, _s: _fmt_cost(f)),
    ]
    return [name for name, _ in groups], [(label, [fn(f, scope) for scope, f in groups]) for label, fn in rows]
