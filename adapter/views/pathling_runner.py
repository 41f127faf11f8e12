"""Our ViewDefinitions on Pathling, the field's SQL on FHIR engine on Apache Spark (issue 19).

Pathling (CSIRO, https://pathling.csiro.au) encodes FHIR resources into Spark and runs SQL on FHIR
views with its ``view()``; its Python package drives the JVM library ``au.csiro.pathling:
library-runtime``, which Spark fetches from Maven Central (``spark.jars.packages``). This module
reads a Bulk Data export folder with Pathling's NDJSON reader and runs each view there, so that a
study team's own engine can be compared with ours row for row (tests/test_views_pathling.py).

Pathling 9.4's jars need Java 21. Run this module in a process of its own (its JVM cannot share
a process with a Spark started on another Java):

    JAVA_HOME=/path/to/java21 python -m adapter.views.pathling_runner EXPORT_DIR OUT.json [--master local[2]]

``OUT.json`` gets ``{view name: [row, ...]}`` (rows as JSON objects in column order). Pathling
takes a file's resource type from its name up to the first dot (``Patient.ndjson``,
``Patient.002.ndjson``); our exports name files ``<n>.<Type>.ndjson`` (Bulk Data leaves names to
the server), so the files are linked under Pathling's names in a scratch folder first.

On a cluster: give ``--master`` the cluster's URL (``spark://...``, ``yarn``, ``k8s://...``); where
the cluster cannot reach Maven Central, stage the jar (``library-runtime-9.4.0.jar``, from Maven
Central or any mirror) and pass ``--jars /path/to/library-runtime-9.4.0.jar`` instead of packages
(``docs/pathling.md``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: the Pathling library the Python package drives (Maven Central coordinates)
LIBRARY = "au.csiro.pathling:library-runtime:9.4.0"



#: Extension value types Pathling encodes (PathlingContext.create ``enabled_open_types``): its
#: default list and Quantity
OPEN_TYPES = ("boolean", "code", "date", "dateTime", "decimal", "integer", "string", "Coding", "CodeableConcept",
              "Address", "Identifier", "Reference", "Quantity")

def stage(export_dir: str, folder: Path) -> Path:
    """Symbolic links in ``folder`` to every ``*.ndjson`` of the export, named ``<Type>.<n>.ndjson``
    (the type read from the file's first resource when the name does not start with it)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, path in enumerate(sorted(Path(export_dir).glob("*.ndjson"))):
        with path.open("rb") as fh:
            first = fh.readline()
        if not first.strip():
            continue
        rtype = json.loads(first)["resourceType"]
        (folder / f"{rtype}.{n:04d}.ndjson").symlink_to(path.resolve())
    return folder


def _column_types(view: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}

    def walk(s: dict[str, Any]) -> None:
        for c in s.get("column") or []:
            out[c["name"]] = c.get("type") or ""
        for sub in [*(s.get("select") or []), *(s.get("unionAll") or [])]:
            walk(sub)

    walk({"select": view.get("select") or []})
    return out


def _typed(value: Any, ftype: str | None) -> Any:
    """Pathling writes decimals as JSON strings (Spark's DecimalType, exact): as numbers, by the
    column's declared type, so that rows compare with other engines'."""
    if isinstance(value, str) and ftype == "decimal":
        return float(value)
    if isinstance(value, str) and ftype in ("integer", "positiveInt", "unsignedInt"):
        return int(value)
    return value


def run(export_dir: str, views: dict[str, dict[str, Any]], master: str = "local[2]", jars: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """The rows of every view (name -> ViewDefinition JSON) over the export on Pathling. Raises
    whatever Pathling raises for a view it cannot run (e.g. FHIRPath outside its subset)."""
    import tempfile

    from pathling import PathlingContext
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(master).appName("pedall-pathling").config("spark.ui.enabled", "false")
    builder = builder.config("spark.jars", jars) if jars else builder.config("spark.jars.packages", LIBRARY)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    # extensions on: our grades, cycles and transplant details are extensions; no terminology server.
    # Pathling encodes extension values of a fixed list of types: its default, and Quantity (the
    # standard-course-quantity of a dispense)
    pc = PathlingContext.create(spark, enable_extensions=True, enable_terminology=False, enabled_open_types=OPEN_TYPES)
    out: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        data = pc.read.ndjson(str(stage(export_dir, Path(scratch))))
        for name, view in views.items():
            df = data.view(json=json.dumps(view))
            types = _column_types(view)
            # toJSON leaves out null columns: put them back, in the view's column order
            out[name] = [{c: _typed(row.get(c), types.get(c)) for c in df.columns}
                         for row in (json.loads(x) for x in df.toJSON().collect())]
    spark.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export_dir")
    ap.add_argument("out")
    ap.add_argument("--views", default=str(Path(__file__).resolve().parents[2] / "views"))
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--jars", default=None, help="a staged library-runtime jar instead of fetching it from Maven Central")
    args = ap.parse_args(argv)
    views = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(Path(args.views).glob("*.json"))}
    rows = run(args.export_dir, views, args.master, args.jars)
    Path(args.out).write_text(json.dumps(rows), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
