"""The CapabilityStatement (FHIR R4 §3.1.0.10 "capabilities"): generated from what is implemented
(the search parameter table, the served types, the profiles folder), so that it cannot claim more."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from adapter.config import CANONICAL
from adapter.search.params import PARAMS, SERVER_TIME_ZONE

INTERACTIONS = ("read", "vread", "history-instance", "search-type", "create", "update", "delete")
_SP_DEFINITION = "http://hl7.org/fhir/SearchParameter/"


#: Bulk Data Access STU2 OperationDefinitions
_BULK = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"


@lru_cache
def _profiles(folder: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in sorted(Path(folder).glob("StructureDefinition-*.json")):
        sd = json.loads(f.read_text(encoding="utf-8"))
        if sd.get("kind") == "resource" and sd.get("derivation") == "constraint":
            out.setdefault(sd["type"], []).append(sd["url"])
    return out


def capability_statement(base: str, profiles_dir: Path, auth: bool = False, token_base: str | None = None) -> dict[str, Any]:
    """The server's CapabilityStatement, for ``base`` (the service's public URL). With ``auth``,
    ``rest.security`` declares SMART-on-FHIR with the token endpoint at ``token_base`` (the tokens'
    audience; default ``base``) (SMART App Launch 2.0 §Conformance, the ``oauth-uris`` extension)."""
    profiles = _profiles(str(profiles_dir))
    resources = []
    for rtype in sorted(PARAMS):
        params = PARAMS[rtype]
        includes = [f"{rtype}:{p.name}" for p in params.values() if p.type == "reference"]
        revincludes = sorted(f"{src}:{p.name}" for src, ps in PARAMS.items() for p in ps.values()
                             if p.type == "reference" and (p.target in (None, rtype)))
        entry: dict[str, Any] = {
            "type": rtype,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
            "interaction": [{"code": c} for c in INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalUpdate": True,
            "conditionalRead": "full-support",
            "conditionalDelete": "not-supported",
            "referencePolicy": ["literal", "local"],
            "searchInclude": includes,
            "searchRevInclude": revincludes,
            "searchParam": [
                {"name": "_id", "type": "token", "definition": _SP_DEFINITION + "Resource-id"},
                {"name": "_lastUpdated", "type": "date", "definition": _SP_DEFINITION + "Resource-lastUpdated"},
                {"name": "_site", "type": "token", "definition": f"{CANONICAL}/SearchParameter/site",
                 "documentation": "the participating site whose compartment holds the resource (site code)"},
                *({"name": p.name, "type": p.type if p.type != "string" else "string",
                   "definition": f"{_SP_DEFINITION}{rtype}-{p.name}",
                   **({"documentation": p.description} if p.description else {})} for p in params.values()),
            ],
        }
        if profiles.get(rtype):
            entry["supportedProfile"] = profiles[rtype]
        if rtype == "Patient":
            entry["operation"] = [{"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"},
                                  {"name": "export", "definition": _BULK + "patient-export"}]
        if rtype == "Group":
            entry["operation"] = [{"name": "export", "definition": _BULK + "group-export"}]
        if rtype == "Subscription":  # Subscriptions Backport IG 1.1.0: the topics offered, and its profile and operations
            from adapter.subscriptions.spec import BACKPORT, MRD_TOPIC

            entry["extension"] = [{"url": BACKPORT + "capabilitystatement-subscriptiontopic-canonical",
                                   "valueCanonical": MRD_TOPIC}]
            entry["supportedProfile"] = [BACKPORT + "backport-subscription"]
            entry["operation"] = [{"name": "status", "definition": "http://hl7.org/fhir/uv/subscriptions-backport/"
                                                                  "OperationDefinition/backport-subscription-status"},
                                  {"name": "events", "definition": "http://hl7.org/fhir/uv/subscriptions-backport/"
                                                                  "OperationDefinition/backport-subscription-events"}]
        resources.append(entry)
    resources.append({"type": "Measure", "profile": "http://hl7.org/fhir/StructureDefinition/Measure",
                      "interaction": [{"code": "read"}],
                      "operation": [{"name": "evaluate-measure",
                                     "definition": "http://hl7.org/fhir/OperationDefinition/Measure-evaluate-measure"}]})
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-22",
        "kind": "instance",
        "software": {"name": "pedall-fhir-adapter", "version": "0.1.0"},
        "implementation": {"description": "FHIR R4 adapter for multicenter pediatric leukemia outcome studies", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": _DOCUMENTATION,
            **({"security": _security(token_base or base)} if auth else {}),
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
            "searchParam": [{"name": "_count", "type": "number", "documentation": "page size (max 1000)"},
                            {"name": "_sort", "type": "string", "documentation": "_id, _lastUpdated or a date parameter; - for descending"},
                            {"name": "_summary", "type": "token", "documentation": "true, text, data, count or false "
                             "(R4 3.1.1.5.8; also on read); a subsetted resource is tagged SUBSETTED"},
                            {"name": "_elements", "type": "string", "documentation": "top-level elements to return, "
                             "plus id, meta and the mandatory ones (R4 3.1.1.5.9; also on read)"},
                            {"name": "_total", "type": "token", "documentation": "every total is exact (none, "
                             "estimate and accurate accepted; _totalMethod too)"}],
            "operation": [
                {"name": "ingest", "definition": f"{CANONICAL}/OperationDefinition/ingest",
                 "documentation": "POST /$ingest multipart (file, site, mapping[, strict, dry_run]): ingest a site export"},
                {"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"},
                {"name": "export", "definition": _BULK + "export"},
                {"name": "viewdefinition-run", "definition": "http://sql-on-fhir.org/OperationDefinition/$viewdefinition-run",
                 "documentation": "GET|POST /$viewdefinition-run (also /ViewDefinition/$viewdefinition-run and "
                                  "/ViewDefinition/{name}/$viewdefinition-run for the project views, GET /ViewDefinition "
                                  "lists them): a SQL on FHIR v2 ViewDefinition over this server's data or the resources "
                                  "sent, as json, ndjson, csv or parquet, under the $export rules (site-confined; coordinators "
                                  "de-identified with a group)"},
                {"name": "viewdefinition-export", "definition": "http://sql-on-fhir.org/OperationDefinition/$viewdefinition-export",
                 "documentation": "POST /$viewdefinition-export or /ViewDefinition/$viewdefinition-export with Prefer: "
                                  "respond-async and one or more view parameters: 202 and a status URL (202 while running, "
                                  "303 to the result: one file per view, csv, ndjson, json or parquet), DELETE cancels; "
                                  "the $export rules apply"},
            ],
        }],
    }


#: What a client needs to know that no structured element says (``rest.documentation``, markdown).
_DOCUMENTATION = (
    f"Dates: search on date parameters, `_lastUpdated`, history and Bulk Data `_since` compare instants; a value "
    f"with a time zone offset is converted to UTC, and a dateTime without an offset or a date without a time is "
    f"read in the server's time zone, {SERVER_TIME_ZONE} (FHIR R4 3.1.1.4.5). `meta.lastUpdated` is written in UTC.\n\n"
    "Profiles: every clinical resource written is checked against one of the `supportedProfile`s of its type. A "
    "resource without `meta.profile` is checked against the one that fits its type and code (for an Observation, "
    "its `code`: MRD, disease status, response, vital status, else pedall-observation) and stored declaring it; "
    "when none fits uniquely the answer is a 422 naming the candidates.\n\n"
    "Conditional references (`Patient?identifier=system|value`) are resolved in transactions, batches and single "
    "creates and updates: no match is a 400, several a 412.\n\n"
    "HTTP: JSON only (XML is a 406, a body that is not JSON a 415); HEAD on every GET route; conditional reads "
    "(`If-None-Match`, `If-Modified-Since`: 304); `Prefer: return=minimal|representation|OperationOutcome` on "
    "create and update; reference search takes `Type/id`, an id with a `:Type` modifier, or an absolute URL under "
    "this server's base; string search is case- and accent-insensitive and matches the start of the value; a batch "
    "or transaction entry may be a search (`GET Type?query`)."
)


def _security(base: str) -> dict[str, Any]:
    return {"service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                     "code": "SMART-on-FHIR"}]}],
            "extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                           "extension": [{"url": "token", "valueUri": f"{base}/auth/token"}]}],
            "description": "SMART Backend Services (client credentials with a private_key_jwt assertion); "
                           "roles site, subscriber, coordinator, admin; see /.well-known/smart-configuration"}
