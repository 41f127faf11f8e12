"""CSV reader: streams a delimited text file row by row.

Encoding, delimiter and quote character come from the mapping's ``reader`` block. Detection is only a
fallback when the mapping leaves them out: encoding tries UTF-8 (with or without BOM) then cp1252;
the delimiter is sniffed from the first 8 KiB with :class:`csv.Sniffer`.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator

from adapter.errors import ReaderError
from adapter.readers.base import Reader, Row, as_cell, check_header, is_blank, register

_FALLBACK_ENCODINGS = ("utf-8-sig", "cp1252")


@register
class CsvReader(Reader):
    """Delimited text (RFC 4180 and the dialects hospital systems write)."""

    format_name = "csv"

    def sheets(self) -> list[str | None]:
        return [None]

    def _encoding(self) -> str:
        declared = getattr(self.options, "encoding", None)
        if declared:
            try:
                codecs.lookup(declared)
            except LookupError:
                raise ReaderError(f"{self.display_name}: unknown encoding {declared!r}") from None
            return declared
        with self.path.open("rb") as fh:
            sample = fh.read(1 << 16)
        for enc in _FALLBACK_ENCODINGS:
            try:
                sample.decode(enc)
                return enc
            except UnicodeDecodeError:
                continue
        raise ReaderError(f"{self.display_name}: cannot detect the text encoding; declare reader.encoding")

    def _delimiter(self, encoding: str) -> str:
        declared = getattr(self.options, "delimiter", None)
        if declared:
            return declared
        with self.path.open("r", encoding=encoding, newline="") as fh:
            sample = fh.read(8192)
        try:
            return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
        except csv.Error:
            raise ReaderError(f"{self.display_name}: cannot detect the delimiter; declare reader.delimiter") from None

    def dialect(self) -> tuple[str, str]:
        """(encoding, delimiter) as declared, or as detected when not declared (``adapter scan``
        writes them into a draft mapping). Raises ReaderError like :meth:`rows`."""
        if not self.path.is_file():
            raise ReaderError(f"{self.display_name}: no such file")
        encoding = self._encoding()
        return encoding, self._delimiter(encoding)

    def rows(self, sheet: str | None, required_columns: set[str]) -> Iterator[Row]:
        if not self.path.is_file():
            raise ReaderError(f"{self.display_name}: no such file")
        encoding = self._encoding()
        delimiter = self._delimiter(encoding)
        quotechar = getattr(self.options, "quotechar", None) or '"'
        # utf-8 files may start with a BOM even when declared as utf-8
        if encoding.replace("_", "-").lower() in ("utf-8", "utf8"):
            encoding = "utf-8-sig"
        line = 0
        try:
            with self.path.open("r", encoding=encoding, newline="") as fh:
                reader = csv.reader(fh, delimiter=delimiter, quotechar=quotechar, strict=True)
                header = next(reader, None)
                if header is None:
                    raise ReaderError(f"{self.display_name}: the file is empty (no header line)")
                header = [h.strip() for h in header]
                check_header(self.display_name, header)
                missing = sorted(required_columns - set(header))
                if missing:
                    raise ReaderError(
                        f"{self.display_name}: missing column(s) {missing}; found {header} "
                        f"(delimiter {delimiter!r}, encoding {encoding})"
                    )
                width = len(header)
                for cells in reader:
                    line = reader.line_num
                    if all(is_blank(c) for c in cells):
                        self.stats.blank += 1
                        continue
                    problem = None
                    if len(cells) != width:
                        problem = f"row has {len(cells)} cells but the header has {width}"
                    self.stats.rows += 1
                    yield Row(self.display_name, None, line, {h: as_cell(c) for h, c in zip(header, cells, strict=False)},
                              problem)
        except UnicodeDecodeError as exc:
            raise ReaderError(
                f"{self.display_name}: bytes after line {line} are not valid {encoding} ({exc.reason}); "
                "check reader.encoding"
            ) from None
        except csv.Error as exc:
            raise ReaderError(f"{self.display_name}: line {line + 1}: malformed CSV ({exc})") from None
