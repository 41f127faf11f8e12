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


def _describe(f: Mapping[str, Any], r: Mapping[str, Any]) -> str:
    """One figure result as text (the table cell)."""
    kind = f["type"]
    if kind == "count":
        return str(r["count"])
    if kind == "proportion":
        if r["rate"] is None:
            return f"{r['count']} / 0"
        return f"{r['count']} / {r['n']} ({100 * r['rate']:.1f} %, 95 % CI {100 * r['ci95'][0]:.1f}–{100 * r['ci95'][1]:.1f})"
    if kind == "summary":
        if not r["n"]:
            return f"no values (missing {r['missing']})"
        return (f"n {r['n']}: median {r['median']} (IQR {r['iqr'][0]}–{r['iqr'][1]}; range {r['range'][0]}–{r['range'][1]}); "
                f"mean {r['mean']} (SD {r['sd']}); missing {r['missing']}")
    if kind == "table":
        return "; ".join(" × ".join("—" if v is None else str(v) for v in c[:-1]) + f": {c[-1]}" for c in r["cells"]) or "none"
    at = ", ".join(f"day {t}: {100 * v['survival']:.1f} % ({100 * v['ci95'][0]:.1f}–{100 * v['ci95'][1]:.1f})"
                   for t, v in r["at"].items())
    left = "; ".join(f"{k}: {v}" for k, v in r["excluded"].items())
    return f"n {r['n']}, events {r['events']}; {at}; median {r['median_days'] or 'not reached'} days" + (f"; left out: {left}" if left else "")


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
    plots = {f["id"]: _km_svg(f["label"], [(s, figs[f["id"]]) for s, figs in scopes]) for f in plan["figures"] if f["type"] == "km"}
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    return env.from_string(_TEMPLATE).render(plan=plan, scopes=scopes, plots=plots, describe=_describe)
