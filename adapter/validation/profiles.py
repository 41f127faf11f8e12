"""Our profiles' constraints, read from the StructureDefinition differentials under ``profiles/``.

Supported differential features (the loader refuses anything else, so no constraint is silently
ignored): ``min``/``max`` (per parent element), ``type`` restrictions on choice elements ``[x]``,
``fixedUri``/``fixedCode``, ``patternCodeableConcept``, required ``binding`` to our ValueSets, and
extension slices by ``url`` (``extension:<name>`` with the extension's profile). Extension definitions
(``kind: complex-type``, type Extension) constrain the value type and its binding. Every Coding
whose system is one of our CodeSystems must use a code that CodeSystem defines.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapter.config import CANONICAL

SUPPORTED = {"id", "path", "min", "max", "type", "fixedUri", "fixedCode", "patternCodeableConcept", "binding",
             "slicing", "sliceName", "short"}


@dataclass
class ElementCheck:
    path: list[str]  # segments after the resource type
    min: int | None = None
    max: int | None = None
    choice_types: list[str] | None = None
    fixed: Any = None
    pattern: dict[str, Any] | None = None
    valueset: str | None = None
    ext_url: str | None = None


@dataclass
class Profile:
    url: str
    type: str
    checks: list[ElementCheck] = field(default_factory=list)


def _children(node: Any, seg: str) -> list[Any]:
    if not isinstance(node, dict):
        return []
    if seg.endswith("[x]"):
        base = seg[:-3]
        vals = [v for k, v in node.items() if k.startswith(base) and k[len(base):][:1].isupper()]
    else:
        vals = [node[seg]] if seg in node else []
    out: list[Any] = []
    for v in vals:
        out.extend(v if isinstance(v, list) else [v])
    return out


def _select(nodes: list[Any], segs: list[str]) -> list[Any]:
    for seg in segs:
        nodes = [c for n in nodes for c in _children(n, seg)]
    return nodes


class ProfileSet:
    """All profiles, extension definitions, CodeSystems and ValueSets of one folder."""

    def __init__(self) -> None:
        self.profiles: dict[str, Profile] = {}
        self.extensions: dict[str, tuple[str, str | None]] = {}  # url -> (value type, valueset)
        self.codesystems: dict[str, set[str]] = {}
        self.valuesets: dict[str, set[tuple[str, str]]] = {}

    @classmethod
    def load(cls, folder: Path) -> ProfileSet:
        """Read ``folder``. Raises ValueError for a differential feature the checker does not support."""
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
            if d["resourceType"] != "StructureDefinition":
                continue
            if d["type"] == "Extension":
                value = next(e for e in d["differential"]["element"] if e["path"] == "Extension.value[x]")
                ps.extensions[d["url"]] = (value["type"][0]["code"], value.get("binding", {}).get("valueSet"))
                continue
            prof = Profile(d["url"], d["type"])
            for e in d["differential"]["element"]:
                unknown = set(e) - SUPPORTED
                if unknown:
                    raise ValueError(f"{d['id']}: {e['id']}: unsupported differential feature(s) {sorted(unknown)}")
                segs = e["path"].split(".")[1:]
                chk = ElementCheck(segs)
                chk.min = e.get("min")
                chk.max = None if e.get("max") in (None, "*") else int(e["max"])
                if "sliceName" in e:
                    chk.ext_url = e["type"][0]["profile"][0]
                elif segs and segs[-1].endswith("[x]") and "type" in e:
                    chk.choice_types = [t["code"] for t in e["type"]]
                chk.fixed = e.get("fixedUri", e.get("fixedCode"))
                chk.pattern = e.get("patternCodeableConcept")
                b = e.get("binding")
                if b and b.get("strength") == "required":
                    chk.valueset = b["valueSet"]
                if chk.min in (0, None) and chk.max is None and not any(
                        (chk.choice_types, chk.fixed, chk.pattern, chk.valueset, chk.ext_url)):
                    continue
                prof.checks.append(chk)
            ps.profiles[d["url"]] = prof
        return ps

    # ---------------------------------------------------------------------------------------- checks

    def errors(self, resource: dict[str, Any]) -> list[Any]:
        """Profile findings for a resource, for each profile in its ``meta.profile``."""
        from adapter.validation.validator import ValidationIssue

        out: list[ValidationIssue] = []
        rtype = resource.get("resourceType", "?")
        profiles = (resource.get("meta") or {}).get("profile") or []
        if not profiles:
            out.append(ValidationIssue("profile", f"{rtype}.meta.profile", "no meta.profile"))
        for url in profiles:
            prof = self.profiles.get(url)
            if prof is None:
                out.append(ValidationIssue("profile", f"{rtype}.meta.profile", f"unknown profile {url}"))
                continue
            if prof.type != rtype:
                out.append(ValidationIssue("profile", rtype, f"profile {url} is for {prof.type}"))
                continue
            for chk in prof.checks:
                out.extend(self._check(resource, rtype, chk))
        for expr, msg in self._codings_and_extensions(resource, rtype):
            out.append(ValidationIssue("profile", expr, msg))
        return out

    def _check(self, resource: dict[str, Any], rtype: str, chk: ElementCheck) -> Iterator[Any]:
        from adapter.validation.validator import ValidationIssue

        expr = rtype + "." + ".".join(chk.path)
        parents = _select([resource], chk.path[:-1])
        last = chk.path[-1]
        for parent in parents:
            values = _children(parent, last)
            if chk.ext_url is not None:
                values = [v for v in values if isinstance(v, dict) and v.get("url") == chk.ext_url]
                expr = f"{rtype}.{'.'.join(chk.path)}('{chk.ext_url.rsplit('/', 1)[-1]}')"
            n = len(values)
            if chk.min is not None and n < chk.min:
                yield ValidationIssue("profile", expr, f"minimum cardinality {chk.min}, found {n}")
            if chk.max is not None and n > chk.max:
                yield ValidationIssue("profile", expr, f"maximum cardinality {chk.max}, found {n}")
            if chk.choice_types is not None and isinstance(parent, dict):
                base = last[:-3]
                for k in parent:
                    if k.startswith(base) and k[len(base):][:1].isupper() and k[len(base):] not in [
                            t[0].upper() + t[1:] for t in chk.choice_types]:
                        yield ValidationIssue("profile", f"{rtype}.{k}", f"type must be one of {chk.choice_types}")
            for v in values:
                if chk.fixed is not None and v != chk.fixed:
                    yield ValidationIssue("profile", expr, f"must be {chk.fixed!r}, found {v!r}")
                if chk.pattern is not None:
                    have = {(c.get("system"), c.get("code")) for c in (v.get("coding") or [])} if isinstance(v, dict) else set()
                    for pc in chk.pattern["coding"]:
                        if (pc["system"], pc["code"]) not in have:
                            yield ValidationIssue("profile", expr, f"must include coding {pc['system']}|{pc['code']}")
                if chk.valueset is not None:
                    yield from self._binding(v, chk.valueset, expr)

    def _binding(self, v: Any, vs: str, expr: str) -> Iterator[Any]:
        from adapter.validation.validator import ValidationIssue

        allowed = self.valuesets.get(vs)
        if allowed is None:
            yield ValidationIssue("profile", expr, f"unknown value set {vs}")
            return
        codings = v.get("coding") or [] if isinstance(v, dict) and "coding" in v else [v] if isinstance(v, dict) else []
        if not any((c.get("system"), c.get("code")) in allowed for c in codings):
            yield ValidationIssue("profile", expr, f"no coding from required value set {vs.rsplit('/', 1)[-1]}")

    def _codings_and_extensions(self, node: Any, expr: str) -> Iterator[tuple[str, str]]:
        if isinstance(node, list):
            for i, item in enumerate(node):
                yield from self._codings_and_extensions(item, f"{expr}[{i}]")
            return
        if not isinstance(node, dict):
            return
        system, code = node.get("system"), node.get("code")
        if isinstance(system, str) and system.startswith(CANONICAL + "/CodeSystem/") and isinstance(code, str):
            codes = self.codesystems.get(system)
            if codes is None:
                yield expr, f"unknown project CodeSystem {system}"
            elif code not in codes:
                yield expr, f"code {code!r} is not defined in {system.rsplit('/', 1)[-1]}"
        url = node.get("url")
        if isinstance(url, str) and url.startswith(CANONICAL + "/StructureDefinition/") and "resourceType" not in node:
            ext = self.extensions.get(url)
            if ext is None:
                yield expr, f"unknown extension {url}"
            else:
                vtype, vs = ext
                key = "value" + vtype[0].upper() + vtype[1:]
                values = [k for k in node if k.startswith("value")]
                if values != [key]:
                    yield expr, f"extension {url.rsplit('/', 1)[-1]} needs exactly {key}, found {values}"
                elif vs is not None:
                    for _e, msg in [(expr, i.message) for i in self._binding(node[key], vs, expr)]:
                        yield expr, msg
        for k, v in node.items():
            if isinstance(v, dict | list):
                yield from self._codings_and_extensions(v, f"{expr}.{k}")
