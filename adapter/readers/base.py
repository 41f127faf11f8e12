"""Reader base class, the :class:`Row` it yields, and the registry of reader formats.

A reader streams one file into rows. It never interprets values (dates, decimals): that is the job of
named transforms, which receive the reader's declared conventions through the transform context.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from adapter.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Row:
    """One source row.

    Attributes:
        file: the file's name (no directory), as the site knows it.
        sheet: the worksheet name for XLSX, ``None`` for CSV.
        row: 1-based row number as a spreadsheet shows it (the header is row 1 when it is the first line).
        cells: column header -> raw cell value (``str`` for CSV; ``str``, ``int``, ``float``,
            ``datetime`` or ``None`` for XLSX).
        problem: set when the row is structurally malformed (e.g. more cells than headers).
        segment: for message formats (HL7 v2), where in the message the row is: ``row`` is then the
            message's number in the file and ``segment`` e.g. ``"OBX 2 (segment 5)"``.
    """

    file: str
    sheet: str | None
    row: int
    cells: dict[str, Any]
    problem: str | None = field(default=None)
    segment: str | None = field(default=None)


@dataclass
class ReadStats:
    """Counts a reader keeps while streaming: data rows yielded and fully blank rows skipped."""

    rows: int = 0
    blank: int = 0


class Reader(abc.ABC):
    """A file format. Subclasses register themselves under ``format_name``.

    ``options`` are the mapping file's ``reader`` block (already validated by the spec model).
    """

    format_name: ClassVar[str]

    def __init__(self, path: Path, options: Any, display_name: str | None = None, data: bytes | None = None) -> None:
        """``data``: the content itself (a message received over MLLP), read instead of ``path``
        by the formats that support it (``hl7v2``)."""
        self.path = Path(path)
        self.data = data
        self.options = options
        self.display_name = display_name or self.path.name
        self.stats = ReadStats()

    @abc.abstractmethod
    def sheets(self) -> list[str | None]:
        """The sheet names present (``[None]`` for single-table formats)."""

    @abc.abstractmethod
    def rows(self, sheet: str | None, required_columns: set[str]) -> Iterator[Row]:
        """Stream the data rows of one sheet.

        Raises:
            ReaderError: the file cannot be decoded or parsed, the sheet is missing, or a
                ``required_columns`` header is absent (the message lists the headers found).
        """


_REGISTRY: dict[str, type[Reader]] = {}


def register(cls: type[Reader]) -> type[Reader]:
    """Class decorator: make a reader available under its ``format_name``."""
    _REGISTRY[cls.format_name] = cls
    return cls


def reader_for(format_name: str) -> type[Reader]:
    """Return the reader class for a format name.

    Raises:
        ConfigError: no reader has that name.
    """
    try:
        return _REGISTRY[format_name]
    except KeyError:
        raise ConfigError(
            f"Unknown reader format '{format_name}'; known: {', '.join(sorted(_REGISTRY))}"
        ) from None


def reader_formats() -> list[str]:
    """Names of all registered reader formats."""
    return sorted(_REGISTRY)


#: Spreadsheet error values (ECMA-376 Part 1 §18.17.3 "Error values", and the ones Excel added
#: since): what a formula that failed shows instead of a value.
SPREADSHEET_ERRORS = frozenset({"#NULL!", "#DIV/0!", "#VALUE!", "#REF!", "#NAME?", "#NUM!", "#N/A", "#GETTING_DATA",
                                "#SPILL!", "#CALC!", "#FIELD!", "#BLOCKED!", "#CONNECT!", "#BUSY!", "#UNKNOWN!"})


class CellError(str):
    """A cell that holds a spreadsheet error (``#N/A``, ``#REF!``…) rather than a value: an XLSX
    cell of error type, or a CSV cell that is exactly such a code (a spreadsheet saved as CSV).
    It reads as its text, but the mapping engine turns any read of it into a row issue."""

    __slots__ = ()


def as_cell(value: Any) -> Any:
    """A CSV/text cell as a reader yields it: an exact spreadsheet error code becomes a
    :class:`CellError`; anything else is returned unchanged."""
    if isinstance(value, str) and value.strip().upper() in SPREADSHEET_ERRORS:
        return CellError(value.strip())
    return value


def check_header(name: str, header: list[str]) -> None:
    """Refuse a header that names a column twice: a mapping could only ever read one of the two,
    and which one would be an accident of position. Raises ReaderError naming the column and both
    positions (1-based). Blank headers (unnamed columns, never read) may repeat."""
    seen: dict[str, int] = {}
    for i, h in enumerate(header, start=1):
        if not h:
            continue
        if h in seen:
            from adapter.errors import ReaderError

            raise ReaderError(f"{name}: the header names column {h!r} twice (columns {seen[h]} and {i}); "
                              "rename one of them so that the mapping reads the one it means")
        seen[h] = i


def is_blank(value: Any) -> bool:
    """True for ``None`` and strings that are empty after stripping whitespace."""
    return value is None or (isinstance(value, str) and not value.strip())
