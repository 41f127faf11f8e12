"""SQL on FHIR v2 views: ViewDefinitions over the stored FHIR (issue 19)."""
