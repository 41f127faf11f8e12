"""Responses the adapter derives from MRD results, stored as FHIR so that FHIR alone carries them.

A site that records no response (HITO's lab export and follow-up workbook) still implies one through
its MRD results before and after blinatumomab (:func:`adapter.outcomes.cohort.derive_response`, seed
002 definitions). Rather than let only our Python know it, the store writes it as a response
Observation (profile ``pedall-response``) with how it was derived: ``method`` = project CodeSystem
``response-method#derived-from-mrd`` and ``derivedFrom`` = the MRD Observations the rule read. A
generic FHIR reader (SQL on FHIR, Pathling) then counts the same responses as the facade.

The Observation is maintained by the store in every write transaction (:func:`derived_response`
is pure; adapter/store/courses.py writes it): it appears when the MRD results imply a response,
changes when they change, and is deleted when the site records a response of its own or the MRD
results no longer imply one. Its id is a hash of the Patient's id, so there is one per patient.
"""

from __future__ import annotations

import hashlib
from typing import Any

from adapter.outcomes.cohort import CS, SD, course_of, derive_response

METHOD_SYSTEM = CS + "response-method"
DERIVED = "derived-from-mrd"
#: Displays of the codes the rule can give (CodeSystem blinatumomab-response, profiles/build.py)
DISPLAYS = {"cr-mrd-negative": "Complete remission with MRD negativity", "mrd-clearance": "MRD clearance",
            "pr": "Partial response", "pd": "Progressive disease"}


def derived_id(patient_id: str) -> str:
    """The id of a Patient's derived response Observation (FHIR id: 64 characters at most)."""
    return "drsp-" + hashlib.sha256(f"derived-response|{patient_id}".encode()).hexdigest()[:40]


def is_derived(resource: dict[str, Any], patient_id: str) -> bool:
    """Whether ``resource`` is the response Observation the store derived for ``patient_id``: its id
    is :func:`derived_id`. (An Observation a client writes with the same ``method`` under another id
    is a recorded response: some other tool derived it, and the store leaves it alone.)"""
    return resource.get("resourceType") == "Observation" and resource.get("id") == derived_id(patient_id)


def derived_response(patient: dict[str, Any], res: dict[str, list[dict[str, Any]]], site: str) -> dict[str, Any] | None:
    """The derived response Observation of one Patient, or None when there must be none.

    Input: the Patient and the current resources of its compartment grouped by type (``{"Observation":
    [...], ...}``, the site's own only). Output: a ``pedall-response`` Observation (no ``meta`` version:
    the store sets it) whose value is the rule's code, dated at the last post-cycle MRD, with
    ``derivedFrom`` the MRD Observations before and after; None when a response is recorded (a
    response Observation that is not derived and not entered-in-error) or the MRD results imply none.
    Never raises for well-formed resources."""
    own = {k: [r for r in v if not is_derived(r, patient["id"])] for k, v in res.items()}
    recorded = [o for o in own.get("Observation", [])
                if SD + "pedall-response" in (o.get("meta") or {}).get("profile", [])
                and o.get("status") not in ("entered-in-error", "cancelled")]
    if recorded:
        return None
    course = course_of(patient, own, site)
    code = derive_response(course)
    if code is None:
        return None
    last, pre = course.mrd_after(), course.mrd_pre
    obs: dict[str, Any] = {
        "resourceType": "Observation", "id": derived_id(patient["id"]), "meta": {"profile": [SD + "pedall-response"]},
        "status": "final",
        "category": [{"coding": [{"system": CS + "assessment-timepoint", "code": "post-cycle",
                                  "display": "After a blinatumomab cycle"}]}],
        "code": {"coding": [{"system": CS + "observation-code", "code": "blinatumomab-response",
                             "display": "Response to blinatumomab"}]},
        "subject": {"reference": f"Patient/{patient['id']}"},
    }
    if last is not None and last.date is not None:
        obs["effectiveDateTime"] = last.date.isoformat()
    obs["valueCodeableConcept"] = {"coding": [{"system": CS + "blinatumomab-response", "code": code,
                                               "display": DISPLAYS[code]}]}
    obs["method"] = {"coding": [{"system": METHOD_SYSTEM, "code": DERIVED, "display": "Derived from MRD results"}],
                     "text": "Derived by the adapter from the MRD results before and after blinatumomab (seed 002 "
                             "definitions: MRD-negative after the last cycle is CR, or MRD clearance from below 1 %; a "
                             "1-log reduction that stays detectable is PR; otherwise PD)"}
    sources = [m.source for m in (pre, last) if m is not None and m.source]
    if sources:
        obs["derivedFrom"] = [{"reference": f"Observation/{s}"} for s in dict.fromkeys(sources)]
    return obs
