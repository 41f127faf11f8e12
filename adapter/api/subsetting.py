"""Subsetting a resource for ``_summary`` and ``_elements`` (FHIR R4 §3.1.1.5.8 "Summary" and
§3.1.1.5.9 "Elements"). Pure functions, no I/O.

Which elements are "summary" elements, and which are mandatory, is read from the ``fhir.resources``
R4B models (``summary_element_property`` / ``element_required``, generated from the official
StructureDefinitions' ``isSummary`` and ``min``) and the official R4 JSON Schema's ``required``
lists, not kept in a table of our own. A subsetted
resource carries the ``SUBSETTED`` tag (R4 §3.1.1.5.8: "the server SHOULD return a meta.tag with
the code SUBSETTED").
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

#: R4 §3.1.1.5.8: the tag a subsetted resource carries
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "subsetted"}
SUMMARY_VALUES = ("true", "text", "data", "count", "false")
#: always kept: what makes a resource a resource
_ALWAYS = frozenset({"resourceType", "id", "meta"})


@lru_cache(maxsize=64)
def _elements(rtype: str) -> tuple[frozenset[str], frozenset[str], dict[str, frozenset[str]]]:
    """``(summary elements, mandatory elements, choice groups)`` of an R4 resource type, by JSON
    name (``class``, ``valueQuantity``); a choice group maps ``value`` to its typed names.
    Raises ``KeyError`` for a type the R4B models do not define."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        model = get_fhir_model_class(rtype)
    except (KeyError, ValueError, ImportError, AttributeError):
        raise KeyError(rtype) from None
    summary, mandatory, choices = set(), set(), {}
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if not extra.get("element_property"):
            continue
        json_name = field.alias or name
        if extra.get("summary_element_property"):
            summary.add(json_name)
        if extra.get("element_required") or extra.get("one_of_many_required"):
            mandatory.add(json_name)
        if extra.get("one_of_many"):
            choices.setdefault(str(extra["one_of_many"]), set()).add(json_name)
    mandatory |= set(_schema_required().get(rtype, ())) - {"resourceType"}
    return frozenset(summary), frozenset(mandatory), {k: frozenset(v) for k, v in choices.items()}


@lru_cache(maxsize=1)
def _schema_required() -> dict[str, list[str]]:
    """``required`` of each definition of the official R4 JSON Schema: the complex elements of
    minimum cardinality 1 (the models flag only primitives as required)."""
    import orjson

    from adapter.config import get_settings

    schema = orjson.loads(get_settings().fhir_schema_path.read_bytes())
    return {k: list(v.get("required", [])) for k, v in schema["definitions"].items() if isinstance(v, dict)}


def element_names(rtype: str) -> frozenset[str]:
    """Every top-level element name ``_elements`` may list for ``rtype``: JSON names and the base
    names of choice elements (``value`` for ``value[x]``). Empty for an unknown type."""
    try:
        _s, _m, choices = _elements(rtype)
        from fhir.resources.R4B import get_fhir_model_class

        model = get_fhir_model_class(rtype)
    except KeyError:
        return frozenset()
    names = {f.alias or n for n, f in model.model_fields.items()
             if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("element_property")}
    return frozenset(names | set(choices) | _ALWAYS)


def _tagged(resource: dict[str, Any], keep: set[str]) -> dict[str, Any]:
    out = {k: v for k, v in resource.items() if k in keep or (k.startswith("_") and k[1:] in keep)}
    meta = dict(out.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if not (isinstance(t, dict) and t.get("code") == "SUBSETTED")]
    meta["tag"] = [*tags, SUBSETTED]
    out["meta"] = meta
    return out


def subset(resource: dict[str, Any], summary: str | None = None, elements: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``resource`` reduced as ``_summary`` (``true``: summary elements; ``text``: text, id, meta and
    mandatory elements; ``data``: all but text; ``false``/``None``: unchanged) or ``_elements``
    (the listed top-level elements, choice base names allowed, plus id, meta and the mandatory ones)
    ask, tagged ``SUBSETTED`` when anything could have been left out. An OperationOutcome (or a
    type the models do not know) is returned unchanged. Never raises."""
    rtype = resource.get("resourceType")
    if rtype == "OperationOutcome" or not isinstance(rtype, str) or (summary in (None, "false", "count") and not elements):
        return resource
    try:
        summary_set, mandatory, choices = _elements(rtype)
    except KeyError:
        return resource
    if elements:
        keep = set(_ALWAYS | mandatory)
        for e in elements:
            keep |= choices.get(e, {e})
        return _tagged(resource, keep)
    if summary == "true":
        return _tagged(resource, set(_ALWAYS | summary_set | mandatory))
    if summary == "text":
        return _tagged(resource, set(_ALWAYS | mandatory | {"text"}))
    if summary == "data":
        return _tagged(resource, set(resource) - {"text"})
    return resource
