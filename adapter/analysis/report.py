"""A plan's figures as one HTML study report: a table per figure (every site and pooled, side by
side) and a Kaplan–Meier plot (inline SVG, matplotlib) per survival figure.

Pure rendering of :func:`adapter.analysis.plan.run_plan` output; Jinja2 escapes every value.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from jinja2 import Environment, select_autoescape

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ plan.title }}</title>
<style>body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}
th{background:#f3f3f3}.paper{color:#555;font-style:italic}</style></head>
<body>
<h1>{{ plan.title }}</h1>
<p>Plan <code>{{ plan.id }}</code>{% if plan.source %}; source: {{ plan.source }}{% endif %}. Every figure is computed from
FHIR resources through the project's SQL on FHIR views.</p>
{% for f in plan.figures %}
<section id="{{ f.id }}">
<h2>{{ f.label }}</h2>
{% if f.paper %}<p class="paper">Paper: {{ f.paper }}</p>{% endif %}
<table><thead><tr><th>site</th><th>{{ f.type }}</th></tr></thead><tbody>
{% for scope, figures in scopes %}<tr><td>{{ scope }}</td><td>{{ describe(f, figures[f.id]) }}</td></tr>
{% endfor %}</tbody></table>
{% if f.type == "km" %}{{ plots[f.id] | safe }}{% endif %}
</section>
{% endfor %}
</body></html>
"""


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}" if isinstance(x, (int, float)) else "—"


def _describe(f: Mapping[str, Any], r: Mapping[str, Any]) -> str:
    """One figure result as text (the table cell); a value withheld by small-cell suppression
    shows as written (``<5``) or as a dash; with ``by``, each group follows the overall value."""
    text = _describe_one(f["type"], r)
    if "by" in r:
        groups = "; ".join(f"{g}: {_describe_one(f['type'], v)}" for g, v in r["by"].items())
        text += f" — by {f['by']}: {groups or 'none'}" + (f"; no value: {r['by_missing']}" if r.get("by_missing") else "")
    return text


def _describe_one(kind: str, r: Mapping[str, Any]) -> str:  # noqa: PLR0911  (one branch per figure type)
    if set(r) == {"n"}:  # suppressed: only the number of patients is shown
        return f"n {r['n']}"
    if kind == "count":
        return str(r["count"])
    if kind == "proportion":
        if r["rate"] is None:
            return f"{r['count']} / {r['n']}"
        return f"{r['count']} / {r['n']} ({_pct(r['rate'])} %, 95 % CI {_pct(r['ci95'][0])}–{_pct(r['ci95'][1])})"
    if kind == "summary":
        if not isinstance(r["n"], int) or not r["n"]:
            return f"n {r['n']} (missing {r['missing']})"
        return (f"n {r['n']}: median {r['median']} (IQR {r['iqr'][0]}–{r['iqr'][1]}; range {r['range'][0]}–{r['range'][1]}); "
                f"mean {r['mean']} (SD {r['sd']}); missing {r['missing']}")
    if kind == "table":
        return "; ".join(" × ".join("—" if v is None else str(v) for v in c[:-1]) + f": {c[-1]}" for c in r["cells"]) or "none"
    left = "; ".join(f"{k}: {v}" for k, v in r.get("excluded", {}).items())
    tail = f"; left out: {left}" if left else ""
    if kind == "logrank":
        groups = ", ".join(f"{g} {v['n']} ({v['events']} events)" for g, v in r["groups"].items())
        return f"{groups}; chi² {r['chi2']}, df {r['df']}, p {r['p']}" + tail
    if kind == "cox":
        hrs = "; ".join(f"{c}: HR {v['hr']} (95 % CI {v['ci95'][0]}–{v['ci95'][1]}), p {v['p']}" if v else f"{c}: not estimable"
                        for c, v in r["covariates"].items())
        return f"n {r['n']}, events {r['events']}; {hrs}" + tail
    if kind == "followup":
        iqr = r.get("iqr_days") or [None, None]
        return f"n {r['n']}: median {r['median_days'] or 'not reached'} days (IQR {iqr[0]}–{iqr[1]})" + tail
    at = ", ".join(f"day {t}: {_pct(v['survival'])} % ({_pct(v['ci95'][0])}–{_pct(v['ci95'][1])})" for t, v in r["at"].items())
    return f"n {r['n']}, events {r['events']}; {at}; median {r['median_days'] or 'not reached'} days" + tail


def _km_svg(label: str, scopes: list[tuple[str, Mapping[str, Any]]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for scope, r in scopes:
        curve = r.get("curve") or []
        if curve:
            ax.step([p[0] for p in curve], [p[1] for p in curve], where="post", label=f"{scope} (n={r['n']})")
    ax.set_xlabel("days from origin")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.05)
    ax.set_title(label)
    ax.legend(loc="lower left", fontsize=8)
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def render_html(plan: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    """The HTML report of ``result`` (run_plan's output for ``plan``)."""
    scopes = [*result["sites"].items(), ("pooled", result["pooled"])]
    plots = {f["id"]: _km_svg(f["label"], [(s, figs[f["id"]]) for s, figs in scopes if "curve" in figs[f["id"]]])
             for f in plan["figures"] if f["type"] == "km"}
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    return env.from_string(_TEMPLATE).render(plan=plan, scopes=scopes, plots=plots, describe=_describe)
