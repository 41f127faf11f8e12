"""The study the network runs, as data: a ResearchStudy, a ResearchSubject per Patient, and a
Group per site and one for the whole study cohort (FHIR R4 §12.21 Group, §10.x ResearchStudy and
ResearchSubject). Bulk Data exports select patients by Group (``/Group/{id}/$export``).

Pure builders; ingestion keeps them current in the transaction that stores a site's Patients.
Ids: ``Group/site-<site>``, ``Group/study-<study>``, ``ResearchStudy/<study>``; a ResearchSubject's
id is a keyed hash of the site and the Patient id, like every other id of a site.
"""

from __future__ import annotations

from typing import Any

from adapter.mapping import fhir
from adapter.mapping.base import SiteContext

#: The store's site code of resources that belong to the network rather than to one hospital.
NETWORK = "network"


def research_study(study_id: str, title: str) -> dict[str, Any]:
    """The network's ResearchStudy (status ``active``)."""
    rs = fhir.profiled("ResearchStudy", study_id, "pedall-research-study")
    rs.update({"identifier": [{"system": fhir.SID + "study", "value": study_id}], "title": title, "status": "active"})
    return rs


def research_subject(site: SiteContext, patient_id: str, study_id: str) -> dict[str, Any]:
    """A Patient's enrolment in the study (status ``on-study``: every patient an export brings
    received blinatumomab in the study)."""
    rs = fhir.profiled("ResearchSubject", site.id("research-subject", patient_id), "pedall-research-subject")
    rs.update({"status": "on-study", "study": fhir.ref("ResearchStudy", study_id), "individual": fhir.ref("Patient", patient_id)})
    return rs


def patient_group(group_id: str, name: str, patient_ids: list[str], managing_site: str | None = None) -> dict[str, Any]:
    """An actual Group of Patients (``type`` person), members in id order, ``quantity`` their number."""
    g = fhir.profiled("Group", group_id, "pedall-patient-group")
    g.update({"identifier": [{"system": fhir.SID + "group", "value": group_id}],
              "type": "person", "actual": True, "name": name, "quantity": len(patient_ids)})
    if managing_site:
        g["managingEntity"] = fhir.ref("Organization", managing_site)
    if patient_ids:
        g["member"] = [{"entity": fhir.ref("Patient", p)} for p in sorted(patient_ids)]
    return g


def site_group_id(site: str) -> str:
    return f"site-{site}"


def study_group_id(study_id: str) -> str:
    return f"study-{study_id}"[:64]
