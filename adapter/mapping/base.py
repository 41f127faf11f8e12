"""The concept registry: each mapping module registers a concept (its input model and its pure
builder). Mapping files name concepts; the loader checks their field names against the input model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from adapter.mapping.fhir import resource_id


class ConceptInput(BaseModel):
    """Base of every concept's input model: typed values produced by a mapping file's fields.
    ``patient`` is the site's own patient identifier (record number), always required."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    patient: str


@dataclass(frozen=True)
class SiteContext:
    """What a builder knows about the site sending the data.

    ``mrd_threshold`` is the MRD negativity threshold in percent (0.01); ``mrd_equal_is_negative``
    says how a result exactly at it is read (declared per site, see ``SiteSpec.mrd``).
    """

    site: str
    name: str
    country: str
    mrd_threshold: float
    mrd_equal_is_negative: bool
    id_key: str

    def id(self, kind: str, *parts: object) -> str:
        """Deterministic id for a resource of this site (see :func:`adapter.mapping.fhir.resource_id`)."""
        return resource_id(self.id_key, self.site, kind, *parts)

    def patient_id(self, patient: str) -> str:
        return self.id("patient", patient)

    def infusion_id(self, patient: str, cycle: int, step: int = 1) -> str:
        """Id of a MedicationAdministration: step 1 of a cycle stands for the whole cycle."""
        return self.id("infusion", patient, cycle, step)


Builder = Callable[[Any, SiteContext], list[dict[str, Any]]]
InputT = TypeVar("InputT", bound=ConceptInput)


@dataclass(frozen=True)
class Concept:
    name: str
    input_model: type[ConceptInput]
    build: Builder
    resource_types: tuple[str, ...]
    doc: str


_REGISTRY: dict[str, Concept] = {}


def concept(name: str, input_model: type[InputT], resource_types: tuple[str, ...]) -> Callable[[Builder], Builder]:
    """Register ``fn(inp, site) -> [resource, ...]`` as the builder of concept ``name``."""

    def deco(fn: Builder) -> Builder:
        _REGISTRY[name] = Concept(name, input_model, fn, resource_types, (fn.__doc__ or "").strip())
        return fn

    return deco


def get_concept(name: str) -> Concept:
    """Return a registered concept. Raises ``KeyError`` for an unknown name."""
    return _REGISTRY[name]


def concepts() -> dict[str, Concept]:
    return dict(_REGISTRY)
