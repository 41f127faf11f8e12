"""The adapter's exceptions, and the CLI exit code of each.

Hierarchy::

    AdapterError                      exit 1   anything the adapter raises on purpose
    ├── ConfigError                   exit 2   settings, mapping files, code tables, profiles
    │   ├── MappingSpecError          exit 2   a mapping file or code table is invalid (names file and key)
    │   └── ViewDefinitionError       exit 2   a SQL on FHIR ViewDefinition cannot be run (adapter/views)
    ├── ReaderError                   exit 3   a file cannot be read (encoding, format, missing sheet/column)
    ├── RowError                      --       one row cannot be mapped; collected, never raised past ingest
    │   └── TransformError            --       a transform rejected a value (names the value)
    ├── IngestRejected                exit 4   --strict and at least one row was rejected; nothing stored
    ├── ValidationFailed              exit 5   a resource fails R4 schema / R4B model / profile validation
    ├── StoreError                    exit 6   the database refused the write; nothing was stored
    │   └── StoreBusy                 exit 7   the write waited too long for a lock; nothing was stored, try again
    └── FiguresDiffer                 exit 8   figures recomputed from the views differ from the facade's

Exit code 0 is success; 64 is a command-line usage error (typer/click's own code is 2, which we remap
so that 2 always means "configuration").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class AdapterError(Exception):
    """Base class. ``exit_code`` is the CLI's numbered exit code for this kind of failure."""

    exit_code = 1


class ConfigError(AdapterError):
    exit_code = 2


class MappingSpecError(ConfigError):
    """A mapping file or code table is invalid. The message names the file and the key path."""

    def __init__(self, file: str, key: str, message: str) -> None:
        self.file, self.key = file, key
        super().__init__(f"{file}: {key}: {message}")


class ReaderError(AdapterError):
    """A file cannot be read at all (not a row-level problem)."""

    exit_code = 3


class TransformError(ValueError):
    """A transform rejected a value. ``value`` is the raw input, ``reason`` says why.

    It is a ``ValueError`` so transforms stay plain Python functions; the engine turns it into a
    :class:`RowIssue` naming file, sheet, row and column.
    """

    def __init__(self, value: Any, reason: str, code: str = "value") -> None:
        """``code``: the FHIR IssueType of the row issue it becomes (``value``; ``code-invalid`` for a
        value no code table maps)."""
        self.value, self.reason, self.code = value, reason, code
        super().__init__(f"{reason}: {value!r}")


class IngestRejected(AdapterError):
    exit_code = 4


class ValidationFailed(AdapterError):
    exit_code = 5


class StoreError(AdapterError):
    exit_code = 6


class StoreBusy(StoreError):
    """A write could not get its locks in time (another ingestion of the site, SQLite's single
    writer, or conflicts that kept coming back): nothing was stored, and the same request can be
    sent again later (HTTP 503 with ``Retry-After``; CLI exit 7). ``retry_after`` is in seconds."""

    exit_code = 7

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RowIssue:
    """One problem with one source row, reported back to the site that sent the file.

    ``severity`` is an OperationOutcome issue severity (error | warning); ``code`` an IssueType code
    (http://hl7.org/fhir/R4/valueset-issue-type.html): ``value``, ``required``, ``code-invalid``,
    ``invariant`` or ``structure``.
    """

    file: str
    sheet: str | None
    row: int | None
    column: str | None
    value: Any
    reason: str
    severity: str = "error"
    code: str = "value"
    expression: list[str] = field(default_factory=list)
    segment: str | None = None  # HL7 v2: the segment within message ``row`` (e.g. "OBX 2 (segment 5)")

    def to_operation_outcome_issue(self) -> dict[str, Any]:
        """Render as an ``OperationOutcome.issue`` (FHIR R4 §OperationOutcome)."""
        where = [f"file={self.file}"]
        if self.sheet:
            where.append(f"sheet={self.sheet}")
        if self.row is not None:
            where.append(f"row={self.row}" if self.segment is None else f"message={self.row}; segment={self.segment}")
        if self.column:
            where.append(f"column={self.column}")
        where.append(f"value={'' if self.value is None else str(self.value)!r}")
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": f"{'; '.join(where)}: {self.reason}",
            "details": {"text": self.reason},
        }
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


class FiguresDiffer(AdapterError):
    """``adapter verify-figures``: a count recomputed from the SQL on FHIR views over an export
    differs from the facade's (the message lists each one). CLI exit 8."""

    exit_code = 8
