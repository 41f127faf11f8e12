"""Outcomes facade: the cohort extracted from stored FHIR resources, and the figures of the seed
papers computed from it, per site and pooled."""

from adapter.outcomes.cohort import PatientCourse, build_cohort
from adapter.outcomes.report import DEFINITIONS, STRATA, outcomes_report

__all__ = ["DEFINITIONS", "STRATA", "PatientCourse", "build_cohort", "outcomes_report"]
