"""``Patient/$everything``'s parameters (R4 OperationDefinition Patient-everything): pure functions.

- ``start``, ``end`` (date): the care dates in scope; a resource whose care date (its clinical date:
  ``effective[x]``, ``performed[x]``, ``onset[x]``, ``period``, ``date``, ``whenHandedOver``…) falls
  outside is left out, one without a care date is kept (the definition: "if no start date is
  provided, all records prior to the end date are in scope"); compared at the dates' precision;
- ``_since`` (instant): only resources whose ``meta.lastUpdated`` is later, compared as instants
  with their offsets;
- ``_type`` (code, repeating, comma-separated): only these resource types;
- ``_count`` (integer): the page size; the ``next`` link pages on with ``_offset``.

Resources come in the order the store lists them (the Patient first), so pages are stable while
the compartment does not change.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from adapter.api.fhir_http import FHIRError
from adapter.search.params import date_range

#: Parameters of Patient-everything this server takes (and _offset for its paging)
NAMES = ("start", "end", "_since", "_type", "_count", "_offset")
#: Page size when _count is not given, and the largest one served
DEFAULT_COUNT, MAX_COUNT = 1000, 1000


def everything_parameters(query: list[tuple[str, str]], body: bytes) -> dict[str, Any]:
    """The operation's parameters from the query and, for a POST, a Parameters body: ``{start,
    end, since, types, count, offset}``. Raises FHIRError 400 for an unknown parameter, a bad
    value or a body that is not a Parameters resource."""
    pairs = list(query)
    if body.strip():
        try:
            doc = json.loads(body)
        except ValueError:
            raise FHIRError(400, "invalid", "the body of POST $everything must be a FHIR Parameters resource (JSON)") from None
        if not isinstance(doc, dict) or doc.get("resourceType") != "Parameters":
            raise FHIRError(400, "invalid", "the body of POST $everything must be a FHIR Parameters resource")
        for p in doc.get("parameter") or []:
            value = next((v for k, v in p.items() if k.startswith("value")), None)
            pairs.append((str(p.get("name")), str(value)))
    out: dict[str, Any] = {"start": None, "end": None, "since": None, "types": None, "count": DEFAULT_COUNT, "offset": 0}
    for name, value in pairs:
        if name in ("_format", "_pretty", "_deidentify"):  # general parameters, taken by the route itself
            continue
        if name not in NAMES:
            raise FHIRError(400, "not-supported", f"$everything does not take parameter '{name}' "
                            f"(it takes {', '.join(NAMES[:-1])})")
        try:
            if name in ("start", "end"):
                out[name] = date_range(value)
            elif name == "_since":
                out["since"] = _instant(value)
            elif name == "_type":
                out["types"] = (out["types"] or set()) | {t.strip() for t in value.split(",") if t.strip()}
            else:
                n = int(value)
                if n < 0 or (name == "_count" and n == 0):
                    raise ValueError(value)
                out["count" if name == "_count" else "offset"] = min(n, MAX_COUNT) if name == "_count" else n
        except ValueError:
            raise FHIRError(400, "invalid", f"$everything: '{value}' is not a valid {name}") from None
    return out


def _instant(text: str) -> datetime:
    """An instant with its offset (R4 instant: a time zone is required)."""
    t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError(text)
    return t


def care_date(r: dict[str, Any]) -> tuple[str, str] | None:
    """The range of the resource's clinical date, or None when it has none."""
    for key in ("effectiveDateTime", "effectiveInstant", "performedDateTime", "onsetDateTime", "date",
                "whenHandedOver", "authoredOn", "recordedDate", "issued", "occurrenceDateTime"):
        if isinstance(r.get(key), str):
            return date_range(r[key])
    for key in ("effectivePeriod", "performedPeriod", "period", "onsetPeriod"):
        p = r.get(key)
        if isinstance(p, dict) and (p.get("start") or p.get("end")):
            lo = date_range(p.get("start") or p["end"])[0]
            hi = date_range(p.get("end") or p["start"])[1]
            return lo, hi
    return None


def select_everything(resources: list[dict[str, Any]], args: dict[str, Any], self_url: str, base: str) -> dict[str, Any]:
    """The searchset Bundle of one page of ``resources`` (the Patient first) kept by ``args``
    (:func:`everything_parameters`), with ``total`` and self/next/previous links."""
    kept = []
    for r in resources:
        if args["types"] is not None and r.get("resourceType") not in args["types"]:
            continue
        if args["since"] is not None:
            updated = (r.get("meta") or {}).get("lastUpdated")
            if not updated or _instant(updated) <= args["since"]:
                continue
        if (args["start"] or args["end"]) and r.get("resourceType") != "Patient":
            when = care_date(r)
            if when is not None and ((args["start"] and when[1] < args["start"][0]) or (args["end"] and when[0] > args["end"][1])):
                continue
        kept.append(r)
    offset, count = args["offset"], args["count"]
    page = kept[offset:offset + count]

    def link(at: int) -> str:
        params: list[tuple[str, str]] = []
        if args["start"]:
            params.append(("start", args["start"][0][:10]))
        if args["end"]:
            params.append(("end", args["end"][1][:10]))
        if args["since"]:
            params.append(("_since", args["since"].isoformat()))
        if args["types"]:
            params.append(("_type", ",".join(sorted(args["types"]))))
        return f"{self_url}?{urlencode([*params, ('_count', str(count)), ('_offset', str(at))])}"

    links = [{"relation": "self", "url": link(offset)}]
    if offset + count < len(kept):
        links.append({"relation": "next", "url": link(offset + count)})
    if offset > 0:
        links.append({"relation": "previous", "url": link(max(0, offset - count))})
    return {"resourceType": "Bundle", "type": "searchset", "total": len(kept), "link": links,
            "entry": [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
                      for r in page]}
