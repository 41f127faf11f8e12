"""XLSX reader: streams named worksheets with openpyxl in read-only mode.

Cells keep their Excel type: real Excel dates arrive as ``datetime``, numbers as ``int``/``float`` and
everything else as ``str``. Transforms accept either form (an Excel date or a date written as text).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import openpyxl
from openpyxl.utils.exceptions import InvalidFileException

from adapter.errors import ReaderError
from adapter.readers.base import Reader, Row, is_blank, register


@register
class XlsxReader(Reader):
    """Office Open XML workbooks (``.xlsx``/``.xlsm``)."""

    format_name = "xlsx"

    def _open(self) -> Any:
        if not self.path.is_file():
            raise ReaderError(f"{self.display_name}: no such file")
        try:
            return openpyxl.load_workbook(self.path, read_only=True, data_only=True)
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
            it = ws.iter_rows(min_row=header_row, values_only=True)
            header_cells = next(it, None)
            if header_cells is None:
                raise ReaderError(f"{self.display_name}[{ws.title}]: the sheet is empty (no header row)")
            header = [str(h).strip() if h is not None else "" for h in header_cells]
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
        except (zipfile.BadZipFile, KeyError, ValueError) as exc:
            raise ReaderError(f"{self.display_name}: corrupt workbook ({exc.__class__.__name__})") from None
        finally:
            wb.close()


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, datetime) or value is None:
        return value
    return value
