"""The validators, and :class:`Validator` that runs them.

Every resource ingestion stores has passed all three (FHIR R4 §Validation; the issue's point 4):

- the official R4 JSON Schema, through ``jsonschema-rs`` (compiled; about 7 µs a resource). The
  pure-Python ``jsonschema`` (about 450 resources/s) is the reference engine of ``full=True``; a test
  keeps the two in agreement on every produced resource;
- our profiles, compiled from their StructureDefinitions into JSON Schema and run by ``jsonschema-rs``
  (see :mod:`adapter.validation.profiles`);
- the ``fhir.resources`` R4B model (about 2,500 resources/s). Its checks beyond the schema are
  structural (choice-type exclusivity, required primitives, nulls), so ingestion runs it once per
  resource *shape* and remembers the shapes that passed (:class:`ShapeMemory`): a resource of a
  remembered shape differs from one the model accepted only in leaf values, which the two schemas
  check. A resource of any other shape goes through the model.

``full=True`` runs all three on every resource, with the pure-Python schema engine: ``adapter
validate``, ``$validate``, the test suite and ``--full-validation`` use it. Writes through the REST
API run the model on every resource but the schema on ``jsonschema-rs`` (``reference=False``): the
reference engine took 90% of a transaction's time. ``bench/ingest.py`` measures the speed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from adapter.config import get_settings
from adapter.validation.profiles import ProfileSet


@dataclass(frozen=True)
class ValidationIssue:
    """One finding: which validator (``r4-schema``, ``r4b-model``, ``profile``), a FHIRPath-like
    ``expression`` and a message."""

    validator: str
    expression: str
    message: str

    def to_operation_outcome_issue(self) -> dict[str, Any]:
        return {"severity": "error", "code": "invariant" if self.validator in ("profile", "r4-invariant") else "structure",
                "diagnostics": f"[{self.validator}] {self.expression}: {self.message}", "expression": [self.expression]}


class R4Schema:
    """The official R4 JSON Schema, one compiled validator per resource type (compiled lazily)."""

    def __init__(self, path: Path) -> None:
        with path.open(encoding="utf-8") as fh:
            schema = json.load(fh)
        self._definitions = schema["definitions"]
        self._meta = schema.get("$schema", "http://json-schema.org/draft-06/schema#")
        self._fast: dict[str, Any] = {}
        self._ref: dict[str, Any] = {}

    def _sub(self, rtype: str) -> dict[str, Any]:
        if rtype not in self._definitions:
            raise KeyError(rtype)
        return {"$schema": self._meta, "definitions": self._definitions, "$ref": f"#/definitions/{rtype}"}

    def errors(self, resource: dict[str, Any], reference: bool = False) -> list[ValidationIssue]:
        """Schema errors of one resource. ``reference=True`` uses the pure-Python ``jsonschema``."""
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or rtype not in self._definitions:
            return [ValidationIssue("r4-schema", "resourceType", f"unknown resourceType {rtype!r}")]
        if reference:
            v = self._ref.get(rtype)
            if v is None:
                v = self._ref[rtype] = jsonschema.Draft6Validator(self._sub(rtype))
            errs = sorted(v.iter_errors(resource), key=lambda e: list(e.absolute_path))
            return [ValidationIssue("r4-schema", _path(rtype, e.absolute_path), e.message[:300]) for e in errs]
        fv = self._fast.get(rtype)
        if fv is None:
            fv = self._fast[rtype] = jsonschema_rs.Draft6Validator(self._sub(rtype))
        if fv.is_valid(resource):
            return []
        return [ValidationIssue("r4-schema", _path(rtype, e.instance_path), e.message[:300])
                for e in fv.iter_errors(resource)]


def _path(rtype: str, parts: Any) -> str:
    out = rtype
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def model_errors(resource: dict[str, Any]) -> list[ValidationIssue]:
    """Errors from the ``fhir.resources`` R4B model of the resource's type (never the R5 default)."""
    rtype = str(resource.get("resourceType"))
    try:
        model = get_fhir_model_class(rtype)
    except (KeyError, ValueError):
        return [ValidationIssue("r4b-model", rtype, f"no R4B model for {rtype!r}")]
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        return [ValidationIssue("r4b-model", _path(rtype, e["loc"]), e["msg"]) for e in exc.errors()]
    except (TypeError, ValueError) as exc:
        return [ValidationIssue("r4b-model", rtype, str(exc)[:300])]
    return []


def shape_schema(value: Any) -> dict[str, Any]:
    """A closed JSON Schema matching exactly the resources of ``value``'s *shape*: the same element
    paths, the same JSON types at the leaves, and lists whose items each have one of the shapes of
    ``value``'s items. Resources of one shape differ only in leaf values."""
    if isinstance(value, dict):
        return {"type": "object", "required": list(value), "additionalProperties": False,
                "properties": {k: shape_schema(v) for k, v in value.items()}}
    if isinstance(value, list):
        items: dict[str, dict[str, Any]] = {}
        for v in value:
            sub = shape_schema(v)
            items.setdefault(json.dumps(sub, sort_keys=True), sub)
        return {"type": "array", "minItems": 1, "items": {"anyOf": list(items.values())}}
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    return {"type": "null"}


class ShapeMemory:
    """The shapes (see :func:`shape_schema`) that passed the ``fhir.resources`` model, per resource
    type, checked in one ``jsonschema-rs`` call. At most ``limit`` shapes per type are remembered;
    a resource of any other shape is checked by the model itself."""

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self._schemas: dict[str, list[dict[str, Any]]] = {}
        self._validators: dict[str, Any] = {}

    def known(self, resource: dict[str, Any]) -> bool:
        v = self._validators.get(resource.get("resourceType"))  # type: ignore[arg-type]
        return v is not None and v.is_valid(resource)

    def remember(self, resource: dict[str, Any]) -> None:
        rtype = str(resource.get("resourceType"))
        schemas = self._schemas.setdefault(rtype, [])
        if len(schemas) >= self.limit:
            return
        schemas.append(shape_schema(resource))
        self._validators[rtype] = jsonschema_rs.Draft202012Validator({"anyOf": list(reversed(schemas))})


def core_invariant_errors(resource: dict[str, Any]) -> list[ValidationIssue]:
    """The FHIR R4 core invariants (every error-severity FHIRPath constraint of the official
    StructureDefinitions that applies to the resource, its backbone elements, its data type
    instances, its contained resources and Bundle entries; e.g. ``mad-1``, ``per-1``, ``qty-3``,
    ``dom-3``, ``ref-1``, ``bdl-*``), evaluated with fhirpathpy (adapter/validation/invariants.py,
    which lists what is not evaluated and why). One issue per broken invariant and location,
    ``"<key>: <human text>"``. Never raises."""
    from adapter.validation.invariants import core_invariants

    return [ValidationIssue("r4-invariant", v.location, f"{v.key}: {v.human}")
            for v in core_invariants().violations(resource)]


class Validator:
    """Runs the three validators
    and the R4 core invariants (:func:`core_invariant_errors`, FHIRPath with fhirpathpy).
    Shapes that passed the model are remembered per process."""

    def __init__(self, schema_path: Path, profiles_dir: Path, core_invariants: bool = True) -> None:
        """``core_invariants=False`` leaves out the R4 core invariants: only for measuring their
        cost (bench/ingest.py, bench/writes.py); the service always checks them."""
        self.schema = R4Schema(schema_path)
        self.profiles = ProfileSet.load(profiles_dir)
        self.shapes = ShapeMemory()
        self.core_invariants = core_invariants

    def validate(self, resource: dict[str, Any], full: bool = False, reference: bool | None = None) -> list[ValidationIssue]:
        """All findings for one resource (empty list = valid). Never raises for bad input.

        ``full``: the R4B model checks every resource (no shape memory). ``reference`` (default:
        ``full``): the R4 schema runs on the pure-Python ``jsonschema`` reference implementation
        instead of ``jsonschema-rs`` (about 40 ms per resource instead of well under 1 ms; both
        implement the same JSON Schema draft)."""
        declared = self.with_profile(resource)
        inferred = declared is not resource
        resource = declared
        issues = self.schema.errors(resource, reference=full if reference is None else reference)
        if self.core_invariants:
            issues += core_invariant_errors(resource)
        findings = [ValidationIssue("profile", f.expression, f.message) for f in self.profiles.errors(resource)]
        if findings and inferred:
            findings.insert(0, ValidationIssue("profile", f"{resource['resourceType']}.meta.profile", (
                f"no meta.profile: checked against {resource['meta']['profile'][0]}, the profile of this server for "
                "its type and code (declare another in meta.profile)")))
        issues += findings
        if full:
            issues += model_errors(resource)
        elif not self.shapes.known(resource):
            model_issues = model_errors(resource)
            if not model_issues and not issues:
                self.shapes.remember(resource)
            issues += model_issues
        return issues


    def with_profile(self, resource: dict[str, Any]) -> dict[str, Any]:
        """``resource`` itself when it declares a ``meta.profile`` (or no profile fits); otherwise a
        copy declaring the one profile of this server that fits its type and code
        (:meth:`ProfileSet.profile_for`), which a write stores, so that a plain R4 resource from a
        generic client is checked against, and classified by, the profile its shape calls for.
        A resource for which no single profile fits is returned as is (its finding is "no
        meta.profile", naming the candidates). Never raises."""
        meta = resource.get("meta")
        if isinstance(meta, dict) and meta.get("profile"):
            return resource
        url = self.profiles.profile_for(resource)
        if url is None:
            return resource
        return {**resource, "meta": {**(meta if isinstance(meta, dict) else {}), "profile": [url]}}


@lru_cache
def get_validator() -> Validator:
    """The process-wide validator for the configured schema and profiles."""
    s = get_settings()
    return Validator(s.fhir_schema_path, s.profiles_dir)
