"""REDCap reader: a "CSV (raw data)" export decoded through the project's data dictionary.

REDCap's raw export writes coded values (``sexo`` = ``1``) and splits each checkbox field into one
0/1 column per choice (``slc_manif___1`` …). The data dictionary (REDCap "Data Dictionary" CSV,
columns ``Variable / Field Name``, ``Field Type``, ``Choices, Calculations, OR Slider Labels``,
``Text Validation Type OR Show Slider Number``) says what each code means, so labels are never
copied by hand into a mapping (REDCap Help & FAQ, "Data Dictionary" and "Data Export" sections).

What a mapping sees, column by column (the header names are REDCap variable names):

- ``radio`` / ``dropdown``: the choice's label (``1, Femenino`` -> ``Femenino``); a code the
  dictionary does not list is a row problem, never passed through.
- ``yesno``: ``Yes`` / ``No``; ``truefalse``: ``True`` / ``False``.
- ``checkbox`` ``f`` with choices 1..n: ``f___k`` is the label of choice k when ticked, blank when
  not; ``f`` itself is the ticked labels joined by `` | `` (blank when none).
- text validated as a date (``date_dmy``, ``date_mdy``, ``date_ymd``) or a datetime: a
  :class:`datetime.date`. Raw exports write dates as ``YYYY-MM-DD`` whatever the validation says.
- every other column: its text, unchanged (``<field>:raw`` gives any column's raw value).

The dictionary is the mapping's ``reader.data_dictionary`` (a path relative to the mapping file);
the data file may start with a UTF-8 BOM, as REDCap writes it.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from adapter.errors import ReaderError
from adapter.readers.base import Row, register
from adapter.readers.csv import CsvReader

_CHECKBOX = re.compile(r"^(?P<field>.+)___(?P<code>[A-Za-z0-9_-]+)$")
_CHOICE = re.compile(r"^\s*([^,]+?)\s*,\s*(.*?)\s*$")
_DATE_VALIDATIONS = ("date_dmy", "date_mdy", "date_ymd")
_DATETIME_VALIDATIONS = ("datetime_dmy", "datetime_mdy", "datetime_ymd", "datetime_seconds_dmy",
                         "datetime_seconds_mdy", "datetime_seconds_ymd")


@dataclass(frozen=True)
class Field:
    """One data-dictionary row: REDCap field name, type, choices (code -> label), validation."""

    name: str
    type: str
    choices: dict[str, str]
    validation: str


def parse_choices(text: str) -> dict[str, str]:
    """``"1, Femenino | 2, Masculino"`` -> ``{"1": "Femenino", "2": "Masculino"}``. Labels may
    contain commas (only the first comma separates code and label). Raises ``ValueError`` for a
    choice without a code."""
    out: dict[str, str] = {}
    for part in text.split("|"):
        if not part.strip():
            continue
        m = _CHOICE.match(part)
        if m is None:
            raise ValueError(f"choice {part.strip()!r} has no 'code, label' form")
        out[m.group(1)] = m.group(2)
    return out


def load_dictionary(path: Path) -> dict[str, Field]:
    """Read a REDCap data dictionary CSV (UTF-8, with or without BOM). Raises :class:`ReaderError`
    when the file is missing or lacks the REDCap columns."""
    if not path.is_file():
        raise ReaderError(f"REDCap data dictionary {path.name}: no such file")
    with path.open("r", encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    need = ("Variable / Field Name", "Field Type", "Choices, Calculations, OR Slider Labels",
            "Text Validation Type OR Show Slider Number")
    if not rows or any(k not in rows[0] for k in need):
        raise ReaderError(f"REDCap data dictionary {path.name}: expected the columns {list(need)}")
    out: dict[str, Field] = {}
    for i, r in enumerate(rows, start=2):
        ftype = r["Field Type"].strip()
        choices: dict[str, str] = {}
        if ftype in ("radio", "dropdown", "checkbox"):
            try:
                choices = parse_choices(r["Choices, Calculations, OR Slider Labels"])
            except ValueError as exc:
                raise ReaderError(f"REDCap data dictionary {path.name}: line {i}: {exc}") from None
        elif ftype == "yesno":
            choices = {"1": "Yes", "0": "No"}
        elif ftype == "truefalse":
            choices = {"1": "True", "0": "False"}
        name = r["Variable / Field Name"].strip()
        out[name] = Field(name, ftype, choices, r["Text Validation Type OR Show Slider Number"].strip())
    return out


@register
class RedcapReader(CsvReader):
    """REDCap "CSV (raw data)" export + data dictionary (see the module docstring)."""

    format_name = "redcap"

    def __init__(self, path: Path, options: Any, display_name: str | None = None, data: bytes | None = None) -> None:
        super().__init__(path, options, display_name, data)
        dd = getattr(options, "data_dictionary", None)
        if not dd:
            raise ReaderError(f"{self.display_name}: a REDCap export needs reader.data_dictionary")
        self.fields = load_dictionary(Path(dd))

    def _decoders(self, header: list[str]) -> dict[str, tuple[Field, str | None]]:
        out: dict[str, tuple[Field, str | None]] = {}
        for h in header:
            if h in self.fields:
                out[h] = (self.fields[h], None)
            elif (m := _CHECKBOX.match(h)) and m.group("field") in self.fields:
                f = self.fields[m.group("field")]
                if f.type != "checkbox" or m.group("code") not in f.choices:
                    raise ReaderError(f"{self.display_name}: column {h} is not a choice of checkbox {f.name} "
                                      "in the data dictionary")
                out[h] = (f, m.group("code"))
        return out

    def rows(self, sheet: str | None, required_columns: set[str]) -> Iterator[Row]:
        raw_required = {c[:-4] if c.endswith(":raw") else c for c in required_columns}
        checkbox_fields = {c for c in raw_required if c in self.fields and self.fields[c].type == "checkbox"}
        decoders: dict[str, tuple[Field, str | None]] | None = None
        for row in super().rows(sheet, raw_required - checkbox_fields):
            if decoders is None:
                decoders = self._decoders(list(row.cells))
                for f in sorted(checkbox_fields):
                    if not any(k.startswith(f + "___") for k in row.cells):
                        raise ReaderError(f"{self.display_name}: missing the columns of checkbox {f} ({f}___<code>)")
            cells, problems = self._decode(row.cells, decoders)
            problem = "; ".join(filter(None, [row.problem, *problems])) or None
            yield Row(row.file, row.sheet, row.row, cells, problem)

    def _decode(self, raw: dict[str, Any], decoders: dict[str, tuple[Field, str | None]]) -> tuple[dict[str, Any], list[str]]:
        cells: dict[str, Any] = {}
        problems: list[str] = []
        ticked: dict[str, list[str]] = {}
        for col, value in raw.items():
            cells[col + ":raw"] = value
            text = (value or "").strip()
            field, code = decoders.get(col, (None, None))
            if field is None or not text:
                cells[col] = value
                if field is not None and field.type == "checkbox":
                    cells[col] = ""
                continue
            if code is not None:  # one checkbox choice, 0/1
                if text not in ("0", "1"):
                    problems.append(f"column {col}: checkbox value {text!r} is not 0 or 1")
                    cells[col] = value
                elif text == "1":
                    cells[col] = field.choices[code]
                    ticked.setdefault(field.name, []).append(field.choices[code])
                else:
                    cells[col] = ""
                continue
            if field.choices:
                label = field.choices.get(text)
                if label is None:
                    problems.append(f"column {col}: code {text!r} is not in the data dictionary "
                                    f"(choices {', '.join(field.choices)})")
                    cells[col] = value
                else:
                    cells[col] = label
            elif field.validation in _DATE_VALIDATIONS or field.validation in _DATETIME_VALIDATIONS:
                try:
                    cells[col] = (datetime.fromisoformat(text).date() if field.validation in _DATETIME_VALIDATIONS
                                  else date.fromisoformat(text))
                except ValueError:
                    problems.append(f"column {col}: {text!r} is not a REDCap raw date (YYYY-MM-DD)")
                    cells[col] = value
            else:
                cells[col] = value
        for name, f in self.fields.items():
            if f.type == "checkbox":
                cells[name] = " | ".join(ticked.get(name, []))
        return cells, problems
