"""The FHIR R4 core invariants: the FHIRPath ``constraint`` expressions of the official
StructureDefinitions (``hl7.fhir.r4.core`` 4.0.1, extracted by ``profiles/r4_invariants.py`` into
``r4_invariants.json``), evaluated with fhirpathpy (beda.software), each expression compiled once.

A resource is walked with the element types of fhirpathpy's R4 model (``path2Type``,
``choiceTypePaths``, ``pathsDefinedElsewhere``): each object met is a resource (root or
contained / in a Bundle entry), a backbone element (``Observation.referenceRange``) or a complex
data type instance (a ``Period``, a ``Quantity``). The resource's own invariants apply at their
element path; a data type's wherever an instance of it is. An invariant is broken when its
expression evaluates to ``false`` (or to something that is not a boolean); an empty result means
it does not apply (``ref-1`` on a Reference without ``reference``), as the HL7 Java validator
reads it.

Not evaluated, and listed by :func:`not_evaluated` with the reason: ``ele-1`` (every element; the
R4 JSON Schema and the R4B model carry it); constraints on primitive elements (``Narrative.div``
``txt-1``/``txt-2`` call the Java validator's ``htmlChecks()``); ``warning``-severity constraints
(best practice, e.g. ``dom-6`` "a resource should have narrative"), which are not errors; any
expression fhirpathpy cannot parse. An invariant whose first disjunct is plainly true of the JSON
(``ref-1`` on a Reference that is not ``#local``, ``dom-2``..``dom-5`` without ``contained``,
``dom-3`` when each contained id is some ``reference``'s value) is not handed to fhirpathpy
(:data:`GUARDS`). An instance of a data type below which no invariant can apply (``Coding``,
``CodeableConcept``, ``Meta``) is not walked unless it carries an extension; expressions are
compiled when first needed. Costs are measured by ``make bench`` (with and without the invariants).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

FILE = Path(__file__).resolve().parent / "r4_invariants.json"

#: When an invariant cannot fail: a check on the JSON object, derived from the expression's first
#: disjunct, which is true (so the whole ``or`` is) when the check is false. Saves fhirpathpy calls
#: on the commonest elements; every invariant not listed is always evaluated.
def _contained_with(key: str) -> Any:
    return lambda n: any(isinstance(c, dict) and key in c for c in n.get("contained") or [])


def _contained_unreferenced(n: dict[str, Any]) -> bool:
    """``dom-3`` can fail: ``n`` has contained resources, and not each one's id is the value of
    some ``reference`` element in ``n`` (``'#' + id in %resource.descendants().reference``, the
    expression's first disjunct). Looked up in ``n``'s compact JSON, where ``"reference":"#id"``
    with unescaped quotes can only be a key and its whole value."""
    contained = n.get("contained")
    if not contained:
        return False
    if not isinstance(contained, list):
        return True
    try:
        text = orjson.dumps(n)
    except orjson.JSONEncodeError:  # not JSON (an integer past 64 bits): evaluated as written
        return True
    for c in contained:
        cid = c.get("id") if isinstance(c, dict) else None
        if not (isinstance(cid, str) and _FHIR_ID.fullmatch(cid) and b'"reference":"#' + cid.encode() + b'"' in text):
            return True
    return False


_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")

GUARDS: dict[str, Any] = {
    # "contained.contained.empty()"
    "dom-2": _contained_with("contained"),
    # "contained.where(('#'+id in %resource.descendants().reference | ...) or ...).not()).empty()"
    "dom-3": _contained_unreferenced,
    # "contained.meta.versionId.empty() and contained.meta.lastUpdated.empty()", "contained.meta.security.empty()"
    "dom-4": _contained_with("meta"),
    "dom-5": _contained_with("meta"),
    # "reference.startsWith('#').not() or ..."
    "ref-1": lambda n: isinstance(n.get("reference"), str) and n["reference"].startswith("#"),
    # "extension.exists() != value.exists()": can fail only when both or neither are there
    "ext-1": lambda n: ("extension" in n) == any(k.startswith("value") and k[5:6].isupper() for k in n),
    # "low.exists() or high.exists() or text.exists()"
    "obs-3": lambda n: not ("low" in n or "high" in n or "text" in n),
    # "dataAbsentReason.empty() or value.empty()"
    "obs-6": lambda n: "dataAbsentReason" in n,
    # "value.empty() or component.code.where(...).empty()"
    "obs-7": lambda n: "component" in n and any(k.startswith("value") and k[5:6].isupper() for k in n),
    # "start.hasValue().not() or end.hasValue().not() or (start <= end)"
    "per-1": lambda n: "start" in n and "end" in n,
    # "code.empty() or system.exists()"
    "qty-3": lambda n: "code" in n and "system" not in n,
}
#: Spellings of the official expressions that fhirpathpy evaluates differently from the Java
#: validator, rewritten to the same meaning: ``as(T)`` on a collection is an error in fhirpathpy
#: (FHIRPath N1 requires a singleton), while ``dom-3`` applies it to ``descendants()``;
#: ``ofType(T)`` is its collection form. fhirpathpy 2.2.4 compares two FHIR ``dateTime`` element
#: values as text, so ``per-1`` would reject a period written with offsets
#: (``10:00+05:00`` ≤ ``06:00Z``); ``toDateTime()`` compares them as instants (FHIRPath §6.3).
#: It cannot compare two Quantity elements at all (``rng-2``'s ``low <= high`` raises); their
#: values are compared when both have the same unit code or none (a range across two different
#: units would need UCUM conversion, and is not checked).
REWRITES = {"dom-3": (("descendants().as(", "descendants().ofType("),),
            "per-1": (("(start <= end)", "(start.toDateTime() <= end.toDateTime())"),),
            "rng-2": (("(low <= high)", "(low.value <= high.value) or (low.code.exists() and high.code.exists() "
                                        "and low.code != high.code)"),)}


def _has_value(inputs: list[Any]) -> list[bool]:
    """FHIRPath ``hasValue()`` (FHIR R4 §2.24 "FHIRPath additional functions"; fhirpathpy 2.2.4
    lacks it): true for a single primitive with a value."""
    return [len(inputs) == 1 and isinstance(inputs[0], str | int | float | bool)]


_OPTIONS = {"traceFn": lambda *_: None,  # trace() in dom-3/ref-1: no console output
            "userInvocationTable": {"hasValue": {"fn": _has_value, "arity": {0: []}}}}


@dataclass(frozen=True)
class Invariant:
    """One constraint: where it applies (``path``: an element path such as
    ``MedicationAdministration.dosage``, or a data type's name), its ``key``, ``severity``,
    ``human`` text and FHIRPath ``expression``."""

    path: str
    key: str
    severity: str
    human: str
    expression: str


@dataclass(frozen=True)
class Violation:
    """An invariant that did not evaluate to ``true`` at ``location`` (a FHIRPath-like path into
    the resource, with list indexes: ``MedicationAdministration.dosage``)."""

    location: str
    key: str
    human: str


class CoreInvariants:
    """The evaluable R4 core invariants, each expression compiled once, when first evaluated
    (thread-safe: compiled functions hold no state between calls, and two threads compiling the
    same expression at once store equal functions)."""

    def __init__(self, path: Path = FILE, memoise: bool = True) -> None:
        """Loads and compiles ``path`` (``r4_invariants.json``). ``memoise=False`` turns off the memos
        (dom-3, ref-1, data type instances), to show in the tests that they change no result."""
        import fhirpathpy
        from fhirpathpy.models import models

        doc = json.loads(path.read_text(encoding="utf-8"))
        self.model = models["r4"]
        self.skipped: dict[str, str] = {"ele-1": "every element; carried by the R4 JSON Schema and the R4B model"}
        self.rules: dict[str, list[Invariant]] = {}
        # results of dom-3 (by _dom3_key) and ref-1 (by the reference and the root's contained ids):
        # everything either expression reads, so one evaluation per key
        self._dom3: dict[tuple[Any, ...], bool] = {}
        # violations below a data type instance, by (type, repr of the instance, the root's contained
        # ids): a data type's invariants read only the instance, %ucum and (ref-1) those ids
        self._datatypes: dict[tuple[Any, ...], list[tuple[str, str, str]]] = {}
        # element path -> JSON property -> (element path, type) of the child, or None (see _lookup_child)
        self._kids: dict[str, dict[str, tuple[str, str | None] | None]] = {}
        self.memoise = memoise
        # each expression is compiled when first evaluated (fhirpathpy's parser takes ~8 ms an
        # expression, and an ingestion meets a handful of the ~120): expression -> compiled function,
        # or None when fhirpathpy cannot parse it (then listed in ``skipped``)
        self._compiled: dict[str, Any] = {}
        self._fhirpathpy = fhirpathpy
        entries = [Invariant(*r) for rules in doc["resources"].values() for r in rules]
        entries += [Invariant(*r) for rules in doc["datatypes"].values() for r in rules]
        for inv in entries:
            if inv.severity != "error":
                self.skipped[inv.key] = f"severity {inv.severity} (best practice, not an error)"
                continue
            if "htmlChecks" in inv.expression:
                self.skipped[inv.key] = "on a primitive (Narrative.div): the Java validator's htmlChecks()"
                continue
            expression = inv.expression
            for old, new in REWRITES.get(inv.key, ()):
                expression = expression.replace(old, new)
            self.rules.setdefault(inv.path, []).append(Invariant(inv.path, inv.key, inv.severity, inv.human, expression))
        #: data types (and element paths) below which an invariant can apply other than through an
        #: extension: an instance of any other type, with no extension in it, is not walked
        self._firing = self._types_with_rules_below(lambda inv: True)
        #: ... and those below which an invariant without a guard can apply (one fhirpathpy runs on
        #: whatever the instance holds): only their instances are memoised; the others' are walked,
        #: which costs no more than a memo lookup
        self._memoised = self._types_with_rules_below(lambda inv: inv.key not in GUARDS)

    def _types_with_rules_below(self, counts: Any) -> frozenset[str]:
        """Type names and element paths that have invariants (those for which ``counts(inv)`` is
        true), or an element (not ``extension`` / ``modifierExtension``) whose type or backbone path
        does, to any depth: the least fixed point over fhirpathpy's R4 model (``path2Type``,
        ``choiceTypePaths``, ``pathsDefinedElsewhere``)."""
        m = self.model
        below: dict[str, set[str]] = {}
        for p, t in m["path2Type"].items():
            parent, _, name = p.rpartition(".")
            if parent and name not in ("extension", "modifierExtension") and t[:1].isupper() and "." not in t:
                below.setdefault(parent, set()).add(t)
        for p, types in m["choiceTypePaths"].items():
            parent = p.rpartition(".")[0]
            below.setdefault(parent, set()).update(t for t in types if t[:1].isupper())
        for b in _backbones():
            below.setdefault(b.rpartition(".")[0], set()).add(b)
        for src, dst in m["pathsDefinedElsewhere"].items():
            below.setdefault(src.rpartition(".")[0], set()).add(dst)
        firing = {p for p, rules in self.rules.items() if any(counts(inv) for inv in rules)}
        grew = True
        while grew:
            grew = False
            for parent, children in below.items():
                if parent not in firing and not children.isdisjoint(firing):
                    firing.add(parent)
                    grew = True
        return frozenset(firing)

    def _function(self, inv: Invariant) -> Any:
        """The compiled expression of ``inv``, compiled on first use; ``None`` when fhirpathpy cannot
        parse it (the invariant is then listed by :meth:`not_evaluated`)."""
        try:
            return self._compiled[inv.expression]
        except KeyError:
            pass
        try:
            fn = self._fhirpathpy.compile(inv.expression, self.model, _OPTIONS)
        except Exception as exc:  # noqa: BLE001 - any parser failure: listed, not evaluated
            self.skipped[inv.key] = f"fhirpathpy cannot parse it: {str(exc)[:80]}"
            fn = None
        self._compiled[inv.expression] = fn
        return fn

    # ------------------------------------------------------------------------------------ walking

    def _lookup_child(self, path: str, key: str) -> tuple[str, str | None] | None:
        """``(element path, type)`` of JSON property ``key`` below ``path``; type ``None`` for a
        backbone element; ``None`` when the model does not know the element."""
        m = self.model
        child = f"{path}.{key}"
        child = m["pathsDefinedElsewhere"].get(child, child)
        if child in m["path2Type"]:
            return child, m["path2Type"][child]
        if child in _backbones():
            return child, None
        for i in range(len(key) - 1, 0, -1):  # a choice: valueQuantity -> value, Quantity
            if key[i].isupper():
                base = f"{path}.{key[:i]}"
                if key[i:] in m["choiceTypePaths"].get(base, ()):
                    return base, key[i:]
                break
        return None

    def violations(self, resource: dict[str, Any]) -> list[Violation]:
        """Every error-severity invariant that does not hold in ``resource`` (a FHIR R4 resource
        as JSON), contained resources and Bundle entries included. Never raises: an expression
        that fails while evaluating is reported as a violation naming the error."""
        out: list[Violation] = []
        rtype = resource.get("resourceType")
        if isinstance(rtype, str):
            self._visit(resource, rtype, rtype, resource, _contained_ids(resource), out)
        return out

    def _visit(self, node: dict[str, Any], path: str, where: str, root: dict[str, Any], cids: tuple[Any, ...],
               out: list[Violation]) -> None:
        """Check ``node`` (at element ``path``; ``where``: its location) and everything below it.
        ``root``: the resource it is in (``%resource``); ``cids``: that resource's contained ids."""
        rules = self.rules.get(path)
        if rules:
            target: Any = None
            for inv in rules:
                guard = GUARDS.get(inv.key)
                if guard is not None and not guard(node):
                    continue
                fn = self._function(inv)
                if fn is None:
                    continue
                memo = (_dom3_key(node) if inv.key == "dom-3" else
                        ("ref-1", node.get("reference"), cids) if inv.key == "ref-1" else None)
                if memo is not None and not self.memoise:
                    memo = None
                if memo is not None and memo in self._dom3:
                    if not self._dom3[memo]:
                        out.append(Violation(where, inv.key, inv.human))
                    continue
                if target is None:
                    from fhirpathpy.engine.nodes import ResourceNode

                    target = node if path == node.get("resourceType") else ResourceNode.create_node(node, path)
                try:
                    result = fn(target, {"resource": root, "rootResource": root})
                except Exception as exc:  # noqa: BLE001 - reported, never a crash of a write
                    out.append(Violation(where, inv.key, f"{inv.human} (could not be evaluated: {str(exc)[:80]})"))
                    continue
                broken = bool(result) and result != [True]  # false (or not a boolean); empty: not applicable
                if memo is not None and len(self._dom3) < 4096:
                    self._dom3[memo] = not broken
                if broken:
                    out.append(Violation(where, inv.key, inv.human))
        kids = self._kids.get(path)
        if kids is None:
            kids = self._kids[path] = {}
        for key, value in node.items():
            if not isinstance(value, dict | list):
                continue
            try:
                found = kids[key]
            except KeyError:
                found = kids[key] = (None if key.startswith("_") or key == "resourceType"
                                     else self._lookup_child(path, key))
            if found is None:
                continue
            child, ctype = found
            listed = isinstance(value, list)
            for i, item in enumerate(value if listed else (value,)):
                if not isinstance(item, dict):
                    continue
                if ctype is None:  # a backbone element
                    self._visit(item, child, f"{where}.{key}" + (f"[{i}]" if listed else ""), root, cids, out)
                elif ctype == "Resource":
                    if isinstance(item.get("resourceType"), str):
                        inner_root = key == "contained"
                        self._visit(item, item["resourceType"], f"{where}.{key}" + (f"[{i}]" if listed else ""),
                                    root if inner_root else item, cids if inner_root else _contained_ids(item), out)
                elif not ctype[:1].isupper():
                    continue
                elif not self.memoise:
                    self._visit(item, ctype, f"{where}.{key}" + (f"[{i}]" if listed else ""), root, cids, out)
                elif ctype in self._memoised:
                    self._visit_datatype(item, repr(item), ctype, f"{where}.{key}" + (f"[{i}]" if listed else ""),
                                         root, cids, out)
                elif ctype in self._firing or "xtension'" in repr(item):
                    self._visit(item, ctype, f"{where}.{key}" + (f"[{i}]" if listed else ""), root, cids, out)

    def _visit_datatype(self, node: dict[str, Any], text: str, ctype: str, where: str, root: dict[str, Any],
                        cids: tuple[Any, ...], out: list[Violation]) -> None:
        """:meth:`_visit` of a data type instance (``text``: its ``repr``), memoised: the same
        instance (a LOINC code, a UCUM unit, a Meta with the same profile) is walked once per
        process. The memo holds locations relative to the instance and is emptied when it reaches
        8,192 instances."""
        key = (ctype, text, cids)
        found = self._datatypes.get(key)
        if found is None:
            inner: list[Violation] = []
            self._visit(node, ctype, "", root, cids, inner)
            found = [(v.location, v.key, v.human) for v in inner]
            if len(self._datatypes) >= 8192:
                self._datatypes.clear()
            self._datatypes[key] = found
        out.extend(Violation(where + loc, k, human) for loc, k, human in found)

    def not_evaluated(self) -> dict[str, str]:
        """``key → reason`` of every extracted invariant that is not evaluated (compiles every
        expression not compiled yet, to know which fhirpathpy cannot parse)."""
        for rules in self.rules.values():
            for inv in rules:
                self._function(inv)
        return dict(self.skipped)


def _contained_ids(resource: dict[str, Any]) -> tuple[Any, ...]:
    """The ids of ``resource``'s contained resources, in order (what ``ref-1`` reads of them)."""
    contained = resource.get("contained")
    return tuple(c.get("id") for c in contained if isinstance(c, dict)) if isinstance(contained, list) else ()


def _dom3_key(resource: dict[str, Any]) -> tuple[Any, ...]:
    """What ``dom-3`` ("a contained resource SHALL be referred to from elsewhere in the resource or
    SHALL refer to the containing resource") depends on: the resource type, the contained ids,
    and every string starting with ``#`` with its element path (which fixes its FHIR type) and the
    contained resource it sits in. Two resources with the same key get the same result, so the
    (costly) expression runs once per key."""
    found: list[tuple[str, str, int]] = []

    def visit(n: Any, path: str, inside: int) -> None:
        if isinstance(n, dict):
            for k, v in n.items():
                visit(v, f"{path}.{k}", inside)
        elif isinstance(n, list):
            for v in n:
                visit(v, path, inside)
        elif isinstance(n, str) and n.startswith("#"):
            found.append((path, n, inside))

    contained = resource.get("contained") or []
    for k, v in resource.items():
        if k != "contained":
            visit(v, k, -1)
    for i, c in enumerate(contained):
        visit(c, f"contained.{c.get('resourceType') if isinstance(c, dict) else ''}", i)
    ids = tuple(c.get("id") if isinstance(c, dict) else None for c in contained)
    return (resource.get("resourceType"), ids, tuple(sorted(found, key=repr)))


@lru_cache(maxsize=1)
def _backbones() -> frozenset[str]:
    """Backbone element paths of the R4 model: paths that have children but no type of their own."""
    from fhirpathpy.models import models

    m = models["r4"]
    parents = {p.rsplit(".", 1)[0] for p in (*m["path2Type"], *m["choiceTypePaths"]) if "." in p}
    return frozenset(p for p in parents if "." in p and p not in m["path2Type"])


@lru_cache(maxsize=1)
def core_invariants() -> CoreInvariants:
    """The process-wide compiled invariants."""
    return CoreInvariants()
