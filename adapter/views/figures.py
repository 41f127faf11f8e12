"""Running the project's SQL on FHIR views (``views/*.json``) on the reference runner (issue 19).

:func:`load_views` compiles every ViewDefinition of a folder; :func:`run_views` runs them over
resources in one pass (adapter/views/runner.py, FHIRPath by fhirpathpy: the oracle the SQL engines
of adapter/views/engines.py are checked against). The figures are computed from the rows by an
analysis plan (adapter/analysis/plan.py; the facade's own figures are plans/default.yaml, and
adapter/analysis/verify.py compares them with ``/outcomes``). Pure functions: the caller reads the
export (``adapter verify-figures``, tests, benchmarks)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from adapter.views.runner import CompiledView


def load_views(folder: Path) -> dict[str, CompiledView]:
    """Every ``*.json`` ViewDefinition of ``folder``, compiled, by ``name``. Raises
    ViewDefinitionError naming the file for an invalid view."""
    from adapter.views.runner import ViewDefinitionError

    out = {}
    for path in sorted(folder.glob("*.json")):
        try:
            view = json.loads(path.read_text(encoding="utf-8"))
            out[view.get("name") or path.stem] = CompiledView(view)
        except (ValueError, ViewDefinitionError) as exc:
            raise ViewDefinitionError(f"{path.name}: {exc}") from None
    return out


def run_views(views: Mapping[str, CompiledView], resources: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The rows of every view over ``resources`` (one pass; each view takes its resource type)."""
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in views}
    by_type: dict[str, list[str]] = defaultdict(list)
    for name, v in views.items():
        by_type[str(v.resource)].append(name)
    for r in resources:
        for name in by_type.get(str(r.get("resourceType")), ()):
            rows[name].extend(views[name].rows([r]))
    return rows
