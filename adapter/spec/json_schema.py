"""JSON Schemas of the declarative files, generated from the pydantic models (for editors and CI)."""

from __future__ import annotations

import json
from pathlib import Path

from adapter.spec.models import CodeTableSpec, MappingSpec, SiteSpec

SCHEMAS = {"mapping": MappingSpec, "site": SiteSpec, "codetable": CodeTableSpec}


def schema_texts() -> dict[str, str]:
    """``{name: JSON text}`` of each schema."""
    out = {}
    for name, model in SCHEMAS.items():
        s = model.model_json_schema(by_alias=True)
        s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        s["$id"] = f"https://w3id.org/pedall-fhir/mappings/schema/{name}.schema.json"
        out[name] = json.dumps(s, indent=2, ensure_ascii=False) + "\n"
    return out


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in schema_texts().items():
        p = folder / f"{name}.schema.json"
        p.write_text(text, encoding="utf-8")
        paths.append(p)
    return paths
