"""XLSX reader: streams named worksheets with openpyxl in read-only mode.

Cells keep their Excel type: real Excel dates arrive as ``datetime``, numbers as ``int``/``float`` and
everything else as ``str``. Transforms accept either form (an Excel date or a date written as text).

Hostile workbooks are refused before or while they are parsed:

- a zip bomb: the archive is checked before openpyxl opens it; more than :data:`MAX_UNCOMPRESSED`
  bytes once unpacked, or a member larger than 1 MiB that unpacks more than :data:`MAX_RATIO` times
  its compressed size, is a ReaderError;
- an XML bomb (entity expansion, external entities): ``defusedxml`` is installed, so openpyxl parses
  every part with it, and a DTD or entity declaration is a ReaderError.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import openpyxl
from defusedxml import DefusedXmlException
from openpyxl.utils.exceptions import InvalidFileException

from adapter.errors import ReaderError
from adapter.readers.base import CellError, Reader, Row, check_header, is_blank, register

#: Largest total size of a workbook's parts once unpacked (bytes).
MAX_UNCOMPRESSED = 512 * 1024 * 1024
#: Largest compression ratio of a part bigger than 1 MiB (real sheets compress about 5-20 times).
MAX_RATIO = 100


def check_archive(path: Any, name: str) -> None:
    """Refuse a zip bomb (see the module docstring). Raises ReaderError."""
    try:
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ReaderError(f"{name}: not a readable XLSX workbook ({exc.__class__.__name__})") from None
    total = sum(m.file_size for m in members)
    if total > MAX_UNCOMPRESSED:
        raise ReaderError(f"{name}: the workbook unpacks to {total:,} bytes, more than the limit of {MAX_UNCOMPRESSED:,}")
    for m in members:
        if m.file_size > 1 << 20 and m.file_size > MAX_RATIO * max(m.compress_size, 1):
            raise ReaderError(f"{name}: part {m.filename[:60]} unpacks {m.file_size // max(m.compress_size, 1)} times "
                              f"its size (limit {MAX_RATIO}): refused as a zip bomb")


@register
class XlsxReader(Reader):
    """Office Open XML workbooks (``.xlsx``/``.xlsm``)."""

    format_name = "xlsx"

    def _open(self) -> Any:
        if not self.path.is_file():
            raise ReaderError(f"{self.display_name}: no such file")
        check_archive(self.path, self.display_name)
        try:
            return openpyxl.load_workbook(self.path, read_only=True, data_only=True)
        except (DefusedXmlException, ValueError) as exc:  # openpyxl wraps a parse error in ValueError
            cause = exc if isinstance(exc, DefusedXmlException) else (exc.__cause__ or exc.__context__)
            if isinstance(cause, DefusedXmlException):
                raise ReaderError(f"{self.display_name}: the workbook's XML declares entities or a DTD "
                                  f"({cause.__class__.__name__}); refused") from None
            raise ReaderError(f"{self.display_name}: not a readable XLSX workbook (invalid XML)") from None
        except (InvalidFileException, zipfile.BadZipFile, KeyError, OSError) as exc:
            raise ReaderError(f"{self.display_name}: not a readable XLSX workbook ({exc.__class__.__name__})") from None

    def sheets(self) -> list[str | None]:
        wb = self._open()
        try:
            return list(wb.sheetnames)
        finally:
            wb.close()

    def rows(self, sheet: str | None, required_columns: set[str]) -> Iterator[Row]:
        wb = self._open()
        try:
            if sheet is None:
                ws = wb.worksheets[0]
            elif sheet in wb.sheetnames:
                ws = wb[sheet]
            else:
                raise ReaderError(f"{self.display_name}: no sheet {sheet!r}; sheets are {wb.sheetnames}")
            header_row = int(getattr(self.options, "header_row", 1) or 1)
            cells_it = ws.iter_rows(min_row=header_row)
            first = next(cells_it, None)
            header_cells = None if first is None else [_value(c) for c in first]
            it = ([_value(c) for c in r] for r in cells_it)
            if header_cells is None:
                raise ReaderError(f"{self.display_name}[{ws.title}]: the sheet is empty (no header row)")
            header = [str(h).strip() if h is not None else "" for h in header_cells]
            check_header(f"{self.display_name}[{ws.title}]", header)
            missing = sorted(required_columns - set(header))
            if missing:
                raise ReaderError(f"{self.display_name}[{ws.title}]: missing column(s) {missing}; found {header}")
            width = len(header)
            for offset, values in enumerate(it, start=header_row + 1):
                if all(is_blank(v) for v in values):
                    self.stats.blank += 1
                    continue
                problem = None
                extra = [v for v in values[width:] if not is_blank(v)]
                if extra:
                    problem = f"row has {len(extra)} value(s) beyond the last headed column"
                cells = {h: _clean(v) for h, v in zip(header, values, strict=False) if h}
                self.stats.rows += 1
                yield Row(self.display_name, ws.title, offset, cells, problem)
        except DefusedXmlException as exc:
            raise ReaderError(f"{self.display_name}: the sheet's XML declares entities or a DTD "
                              f"({exc.__class__.__name__}); refused") from None
        except (zipfile.BadZipFile, KeyError, ValueError) as exc:
            raise ReaderError(f"{self.display_name}: corrupt workbook ({exc.__class__.__name__})") from None
        finally:
            wb.close()


def _value(cell: Any) -> Any:
    """A cell's value; an error cell (data type ``e``: ``#N/A``, ``#REF!``…) as a :class:`CellError`."""
    value = getattr(cell, "value", None)
    if getattr(cell, "data_type", None) == "e" and value is not None:
        return CellError(str(value))
    return value


def _clean(value: Any) -> Any:
    if isinstance(value, CellError):
        return value
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, datetime) or value is None:
        return value
    return value
