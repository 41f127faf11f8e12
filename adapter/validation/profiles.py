"""Our profiles' constraints, compiled from the StructureDefinition differentials under ``profiles/``
into JSON Schema (draft 2020-12) and checked by ``jsonschema-rs``.

Each profile becomes one schema: an ``allOf`` with one entry per constraint of the differential, plus
a recursive rule over the whole resource for our CodeSystems and extensions. A failing entry is
reported with the element path and the constraint it states (``schema_path`` maps back to it), so the
messages name FHIR elements, not schema keywords.

Supported differential features (FHIR R4 §2.28 ElementDefinition; the loader refuses anything else,
so no constraint is silently ignored):

- ``min``/``max``, per parent element (a nested path is checked in every parent that is present);
- ``type`` restrictions on a choice element ``[x]`` (as the last path segment);
- ``fixedUri``/``fixedCode`` (every value equals it);
- ``patternCodeableConcept`` (every value holds each of the pattern's codings);
- a required ``binding`` to one of our ValueSets (every value has a coding from it);
- extension slices by ``url`` (``extension:<name>`` with the extension's profile; ``min``/``max``).

Extension definitions (``kind: complex-type``, type Extension) constrain the value type and its
binding. Everywhere in a resource, a Coding whose system is one of our CodeSystems must use a code
that CodeSystem defines, and an extension with our canonical URL must be one we define.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema_rs

from adapter.config import CANONICAL

#: Resource types that are the server's machinery, not clinical data: they need no profile of ours.
INFRASTRUCTURE = ("Subscription",)

SUPPORTED = {"id", "path", "min", "max", "type", "fixedUri", "fixedCode", "patternCodeableConcept", "binding",
             "slicing", "sliceName", "short", "constraint"}

#: The one invariant form supported (on the root element): ``a.exists() or b.exists()``; a name
#: that is a choice element in the differential (``value[x]``) stands for any of its types.
_EXISTS_OR = re.compile(r"^(\w+(?:\[x\])?)\.exists\(\) or (\w+(?:\[x\])?)\.exists\(\)$")



@dataclass(frozen=True)
class ProfileFinding:
    """One profile finding: FHIRPath-like ``expression`` and a human ``message``."""

    expression: str
    message: str


@dataclass
class CompiledProfile:
    """One profile: its canonical ``url``, resource ``type``, the compiled JSON Schema and, per
    ``allOf`` entry, the element it constrains and the constraint in words."""

    url: str
    type: str
    schema: dict[str, Any]
    rules: list[tuple[str, str]] = field(default_factory=list)
    validator: Any = None
    #: ``(element, system, code)`` of each coding a top-level element's ``patternCodeableConcept``
    #: requires (``Observation.code`` of pedall-mrd): what tells this profile's resources apart
    patterns: list[tuple[str, str, str]] = field(default_factory=list)


def _regex_literal(text: str) -> str:
    """``text`` as an ECMA-262 regex literal (escape the metacharacters; ``/`` and ``-`` need none)."""
    return "".join("\\" + c if c in r"\.^$*+?()[]{}|" else c for c in text)


def _present(name: str) -> dict[str, Any]:
    """Schema: the element ``name`` (``value[x]``: any ``value*`` key) is present."""
    if name.endswith("[x]"):
        return {"type": "object", "not": {"propertyNames": {"not": {"pattern": f"^{_regex_literal(name[:-3])}[A-Z]"}}}}
    return {"type": "object", "required": [name]}


def _each(schema: dict[str, Any]) -> dict[str, Any]:
    """Apply ``schema`` to a value, or to each item when the value is an array (FHIR JSON repeats
    elements as arrays; the checks count and test every repetition)."""
    return {"if": {"type": "array"}, "then": {"items": schema}, "else": schema}


def _at(segments: list[str], schema: dict[str, Any]) -> dict[str, Any]:
    """Apply ``schema`` (a schema for the *parent object*) at every parent reached by ``segments``."""
    for seg in reversed(segments):
        if seg.endswith("[x]"):
            raise ValueError(f"choice element {seg} is only supported as the last path segment")
        schema = {"properties": {seg: _each(schema)}}
    return schema


def _codings_schema(allowed: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """A Coding whose (system, code) is one of ``allowed``."""
    by_system: dict[str, list[str]] = {}
    for system, code in sorted(allowed):
        by_system.setdefault(system, []).append(code)
    return {"anyOf": [{"type": "object", "required": ["system", "code"],
                       "properties": {"system": {"const": s}, "code": {"enum": codes}}}
                      for s, codes in by_system.items()] or [False]}


def _binding_schema(allowed: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """A CodeableConcept with at least one coding from ``allowed``, or such a Coding itself."""
    coding = _codings_schema(allowed)
    return {"type": "object",
            "if": {"required": ["coding"]},
            "then": {"properties": {"coding": {"type": "array", "contains": coding}}},
            "else": coding}


def _value_key(vtype: str) -> str:
    return "value" + vtype[0].upper() + vtype[1:]


class ProfileSet:
    """All profiles, extension definitions, CodeSystems and ValueSets of one folder, compiled."""

    def __init__(self) -> None:
        self.profiles: dict[str, CompiledProfile] = {}
        self.extensions: dict[str, tuple[str, str | None]] = {}  # url -> (value type, valueset)
        self.codesystems: dict[str, set[str]] = {}
        self.valuesets: dict[str, set[tuple[str, str]]] = {}

    @classmethod
    def load(cls, folder: Path) -> ProfileSet:
        """Read and compile ``folder``.

        Raises:
            ValueError: a differential uses a feature the compiler does not support, or refers to a
                ValueSet, CodeSystem or extension that the folder does not define.
        """
        ps = cls()
        docs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))
                if p.name != "fhir.r4.schema.json"]
        for d in docs:
            if d["resourceType"] == "CodeSystem":
                ps.codesystems[d["url"]] = {c["code"] for c in d.get("concept", [])}
        for d in docs:
            if d["resourceType"] == "ValueSet":
                allowed: set[tuple[str, str]] = set()
                for inc in d["compose"]["include"]:
                    if "concept" in inc:
                        allowed |= {(inc["system"], c["code"]) for c in inc["concept"]}
                    else:
                        allowed |= {(inc["system"], c) for c in ps.codesystems[inc["system"]]}
                ps.valuesets[d["url"]] = allowed
        for d in docs:
            if d["resourceType"] == "StructureDefinition" and d["type"] == "Extension":
                value = next(e for e in d["differential"]["element"] if e["path"] == "Extension.value[x]")
                ps.extensions[d["url"]] = (value["type"][0]["code"], value.get("binding", {}).get("valueSet"))
        node = ps._node_schema()
        for d in docs:
            if d["resourceType"] == "StructureDefinition" and d["type"] != "Extension":
                prof = ps._compile(d)
                prof.schema["$defs"] = {"node": node}
                prof.schema["allOf"].append({"$ref": "#/$defs/node"})
                prof.validator = jsonschema_rs.Draft202012Validator(prof.schema)
                ps.profiles[d["url"]] = prof
        return ps

    # ------------------------------------------------------------------------------------ compiling

    def _valueset(self, url: str, where: str) -> set[tuple[str, str]]:
        if url not in self.valuesets:
            raise ValueError(f"{where}: binding to unknown value set {url}")
        return self.valuesets[url]

    def _compile(self, sd: dict[str, Any]) -> CompiledProfile:
        rtype = sd["type"]
        prof = CompiledProfile(sd["url"], rtype, {"$schema": "https://json-schema.org/draft/2020-12/schema",
                                                  "allOf": []})

        def rule(expr: str, message: str, schema: dict[str, Any]) -> None:
            prof.schema["allOf"].append(schema)
            prof.rules.append((expr, message))

        for e in sd["differential"]["element"]:
            where = f"{sd['id']}: {e['id']}"
            unknown = set(e) - SUPPORTED
            if unknown:
                raise ValueError(f"{where}: unsupported differential feature(s) {sorted(unknown)}")
            segs = e["path"].split(".")[1:]
            if not segs:
                for c in e.get("constraint", []):
                    m = _EXISTS_OR.match(c.get("expression", ""))
                    if m is None or c.get("severity") != "error":
                        raise ValueError(f"{where}: unsupported invariant {c.get('key')}: {c.get('expression')!r}")
                    choices = {x["path"].split(".")[-1][:-3] for x in sd["differential"]["element"] if x["path"].endswith("[x]")}
                    names = [n + "[x]" if n in choices else n for n in m.groups()]
                    rule(rtype, f"{c['key']}: {c['human']}", {"anyOf": [_present(n) for n in names]})
                continue
            if "constraint" in e:
                raise ValueError(f"{where}: invariants are supported on the root element only")
            parents, last = segs[:-1], segs[-1]
            expr = rtype + "." + ".".join(segs)
            lo = e.get("min")
            hi = None if e.get("max") in (None, "*") else int(e["max"])
            if "sliceName" in e:
                url = e["type"][0]["profile"][0]
                if url not in self.extensions:
                    raise ValueError(f"{where}: slice on unknown extension {url}")
                if set(e) - {"id", "path", "min", "max", "type", "sliceName", "short"}:
                    raise ValueError(f"{where}: an extension slice supports only min and max")
                expr = f"{expr}('{url.rsplit('/', 1)[-1]}')"
                has = {"type": "object", "required": ["url"], "properties": {"url": {"const": url}}}
                if lo:
                    rule(expr, f"minimum cardinality {lo}",
                         _at(parents, {"type": "object", "required": [last], "properties": {last: {
                             "type": "array", "contains": has, "minContains": lo}}}))
                if hi is not None:
                    rule(expr, f"maximum cardinality {hi}",
                         _at(parents, {"properties": {last: {"if": {"type": "array"}, "then": {
                             "contains": has, "minContains": 0, "maxContains": hi}}}}))
                continue
            if last.endswith("[x]"):
                base = last[:-3]
                any_key = {"pattern": f"^{_regex_literal(base)}[A-Z]"}
                if lo:
                    rule(expr, f"minimum cardinality {lo}", _at(parents, {"type": "object", "not": {"propertyNames": {"not": any_key}}}))
                if "type" in e:
                    kinds = [t["code"] for t in e["type"]]
                    rule(expr, f"type must be one of {kinds}",
                         _at(parents, {"propertyNames": {"if": any_key, "then": {
                             "enum": [base + k[0].upper() + k[1:] for k in kinds]}}}))
                if hi is not None or lo not in (None, 0, 1) or set(e) & {"fixedUri", "fixedCode",
                                                                          "patternCodeableConcept", "binding"}:
                    raise ValueError(f"{where}: a choice element supports only min (0 or 1) and type")
                continue
            if lo:
                rule(expr, f"minimum cardinality {lo}",
                     _at(parents, {"type": "object", "required": [last], "properties": {last: {
                         "if": {"type": "array"}, "then": {"minItems": lo}, "else": lo <= 1}}}))
            if hi is not None:
                rule(expr, f"maximum cardinality {hi}",
                     _at(parents, {"not": {"required": [last]}} if hi == 0 else {"properties": {last: {
                         "if": {"type": "array"}, "then": {"maxItems": hi}}}}))
            fixed = e.get("fixedUri", e.get("fixedCode"))
            if fixed is not None:
                rule(expr, f"must be {fixed!r}", _at(parents, {"properties": {last: _each({"const": fixed})}}))
            pattern = e.get("patternCodeableConcept")
            if pattern is not None:
                if not parents:
                    prof.patterns += [(last, pc["system"], pc["code"]) for pc in pattern["coding"]]
                for pc in pattern["coding"]:
                    rule(expr, f"must include coding {pc['system']}|{pc['code']}",
                         _at(parents, {"properties": {last: _each({"type": "object", "required": ["coding"],
                                                                   "properties": {"coding": {
                                                                       "type": "array",
                                                                       "contains": _codings_schema([(pc["system"], pc["code"])])}}})}}))
            b = e.get("binding")
            if b and b.get("strength") == "required":
                vs = b["valueSet"]
                rule(expr, f"no coding from required value set {vs.rsplit('/', 1)[-1]}",
                     _at(parents, {"properties": {last: _each(_binding_schema(self._valueset(vs, where)))}}))
        return prof

    def _node_schema(self) -> dict[str, Any]:
        """The rule applied to every object in a resource: a Coding with one of our CodeSystems must
        use a code it defines; an extension with our canonical URL must be one we define, with
        exactly its value type (and a code from its binding)."""
        codings = [{"required": ["code"], "properties": {"system": {"const": system}, "code": {"enum": sorted(codes)}}}
                   for system, codes in sorted(self.codesystems.items())]
        extensions = []
        for url, (vtype, vs) in sorted(self.extensions.items()):
            key = _value_key(vtype)
            ext: dict[str, Any] = {"required": [key], "properties": {"url": {"const": url}},
                                   "propertyNames": {"if": {"pattern": "^value"}, "then": {"const": key}}}
            if vs is not None:
                ext["properties"][key] = _binding_schema(self._valueset(vs, url))
            extensions.append(ext)
        our_cs = {"type": "string", "pattern": "^" + _regex_literal(CANONICAL + "/CodeSystem/")}
        our_sd = {"type": "string", "pattern": "^" + _regex_literal(CANONICAL + "/StructureDefinition/")}
        return {"if": {"type": "object"},
                "then": {
                    "allOf": [
                        {"if": {"required": ["system", "code"], "properties": {"system": our_cs, "code": {"type": "string"}}},
                         "then": {"anyOf": codings or [False]}},
                        {"if": {"required": ["url"], "not": {"required": ["resourceType"]}, "properties": {"url": our_sd}},
                         "then": {"anyOf": extensions or [False]}},
                    ],
                    "additionalProperties": {"$ref": "#/$defs/node"}},
                "else": {"if": {"type": "array"}, "then": {"items": {"$ref": "#/$defs/node"}}}}

    # ---------------------------------------------------------------------------------------- checks

    def profile_for(self, resource: dict[str, Any]) -> str | None:
        """The canonical URL of the one profile of this set a resource without ``meta.profile`` is
        checked against (and declared to conform to when stored): among the profiles for its type,
        the one whose top-level ``patternCodeableConcept`` codings the resource carries (pedall-mrd
        for an Observation coded ``observation-code#mrd``), else the one profile of the type that
        requires no such pattern (pedall-observation). ``None`` for an infrastructure type, a type
        without a profile here, or when the choice is not unique (then the client must declare
        one). Never raises."""
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or rtype in INFRASTRUCTURE:
            return None
        candidates = [p for p in self.profiles.values() if p.type == rtype]

        def carries(prof: CompiledProfile) -> bool:
            for element, system, code in prof.patterns:
                value = resource.get(element)
                codings = value.get("coding") if isinstance(value, dict) else None
                if not isinstance(codings, list) or not any(
                        isinstance(c, dict) and c.get("system") == system and c.get("code") == code for c in codings):
                    return False
            return True

        specific = [p for p in candidates if p.patterns and carries(p)]
        if len(specific) == 1:
            return specific[0].url
        general = [p for p in candidates if not p.patterns]
        return general[0].url if not specific and len(general) == 1 else None

    def errors(self, resource: dict[str, Any]) -> list[ProfileFinding]:
        """Profile findings for a resource, for each profile in its ``meta.profile`` (empty = conforms).
        Never raises for bad input."""
        out: list[ProfileFinding] = []
        rtype = resource.get("resourceType", "?")
        meta = resource.get("meta")
        profiles = (meta.get("profile") if isinstance(meta, dict) else None) or []
        if rtype in INFRASTRUCTURE:  # not clinical data: the R4 schema and the R4B model check it; a
            # profile of another IG (e.g. the Subscriptions Backport IG's) is the client's declaration
            profiles = [u for u in profiles if isinstance(u, str) and u.startswith(CANONICAL)]
            if not profiles:
                return out
        if not profiles:
            urls = sorted(p.url.rsplit("/", 1)[-1] for p in self.profiles.values() if p.type == rtype)
            out.append(ProfileFinding(f"{rtype}.meta.profile", (
                f"no meta.profile, and no single profile fits by its code; declare one of {', '.join(urls)}" if urls else
                f"no meta.profile, and this server has no profile for {rtype}")))
        for url in profiles:
            prof = self.profiles.get(url) if isinstance(url, str) else None
            if prof is None:
                out.append(ProfileFinding(f"{rtype}.meta.profile", f"unknown profile {url}"))
            elif prof.type != rtype:
                out.append(ProfileFinding(str(rtype), f"profile {url} is for {prof.type}"))
            elif not prof.validator.is_valid(resource):
                out.extend(self._explain(prof, resource, str(rtype)))
        return out

    def _explain(self, prof: CompiledProfile, resource: dict[str, Any], rtype: str) -> list[ProfileFinding]:
        seen: dict[ProfileFinding, None] = {}
        for err in prof.validator.iter_errors(resource):
            seen[self._finding(prof, err, rtype)] = None
        return list(seen)

    def _finding(self, prof: CompiledProfile, err: Any, rtype: str) -> ProfileFinding:
        sp, ip = list(err.schema_path), list(err.instance_path)
        if sp[:1] == ["allOf"] and isinstance(sp[1], int) and sp[1] < len(prof.rules):
            return ProfileFinding(*prof.rules[sp[1]])
        where = _expression(rtype, ip)
        if sp[:4] == ["$defs", "node", "then", "allOf"] and isinstance(err.instance, dict):
            node = err.instance
            if sp[4] == 0:
                system, code = node.get("system"), node.get("code")
                if system not in self.codesystems:
                    return ProfileFinding(where, f"unknown project CodeSystem {system}")
                return ProfileFinding(where, f"code {code!r} is not defined in {system.rsplit('/', 1)[-1]}")
            url = node.get("url")
            if url not in self.extensions:
                return ProfileFinding(where, f"unknown extension {url}")
            vtype, vs = self.extensions[url]
            bound = f" with a code from {vs.rsplit('/', 1)[-1]}" if vs else ""
            return ProfileFinding(where, f"extension {url.rsplit('/', 1)[-1]} needs exactly {_value_key(vtype)}{bound}")
        return ProfileFinding(where, err.message[:300])


def _expression(rtype: str, parts: Iterable[Any]) -> str:
    out = rtype
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out
