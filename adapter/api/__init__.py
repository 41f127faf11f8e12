"""The FHIR R4 REST service: :func:`create_app`."""

from adapter.api.app import create_app

__all__ = ["create_app"]
