"""Bulk Data export folders: NDJSON files -> FHIR resources (JSON objects)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from adapter.errors import ReaderError


def iter_export(folder: Path) -> Iterator[dict[str, Any]]:
    """Every resource of every ``*.ndjson`` file of a Bulk Data export folder (``adapter export
    --out``, or the files of an ``$export`` manifest), one JSON object per line, files in name
    order. Raises ReaderError for a missing folder, a folder with no NDJSON file, or a line that is
    not a JSON object with a ``resourceType`` (naming the file and line; the line is not echoed, as
    it may identify a patient)."""
    if not folder.is_dir():
        raise ReaderError(f"{folder}: not a folder")
    files = sorted(folder.glob("*.ndjson"))
    if not files:
        raise ReaderError(f"{folder}: no .ndjson file")
    for path in files:
        with path.open("rb") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise ReaderError(f"{path.name}, line {number}: not JSON") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("resourceType"), str):
                    raise ReaderError(f"{path.name}, line {number}: not a FHIR resource (no resourceType)")
                yield obj
