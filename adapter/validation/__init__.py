"""Validation of produced resources by three independent validators:

1. the official FHIR R4 JSON Schema (``profiles/fhir.r4.schema.json``), each resource against its own
   ``#/definitions/<type>``;
2. the ``fhir.resources`` R4B pydantic models;
3. our profiles' constraints (``profiles/StructureDefinition-*.json``) and CodeSystems.
"""

from adapter.validation.validator import ValidationIssue, Validator, get_validator

__all__ = ["ValidationIssue", "Validator", "get_validator"]
