"""Mapping: rows -> FHIR R4 JSON, as pure functions. Importing this package registers every concept."""

from adapter.mapping import (  # noqa: F401  (registration side effects)
    adverse_event,
    disease,
    dispense,
    hsct,
    infusion,
    mrd,
    observation,
    patient,
    therapy,
)
from adapter.mapping.base import Concept, ConceptInput, SiteContext, concepts, get_concept

__all__ = ["Concept", "ConceptInput", "SiteContext", "concepts", "get_concept"]
