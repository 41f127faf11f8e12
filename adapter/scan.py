"""Profile an export before writing its mapping, like OHDSI WhiteRabbit's scan report: for each
column its inferred type (and date format), blanks, distinct values and the most frequent values,
then a draft mapping file to start from.

The profile is meant to be shared (pasted into an onboarding ticket, sent to the study's data
manager), so values that look like names or identifiers are **masked**: only counts and value
*shapes* (``A`` a letter, ``9`` a digit, e.g. ``AAA9999999``) are shown for them. A column is masked
when its header names a person or a record (name, surname, MRN, NHS number, CURP, date of birth,
address...; HL7 v2 PID fields that hold them), when its values look like identifiers (nearly all
distinct, letters/digits tokens with a digit) or like personal names (capitalised words, nearly all
distinct), or when it is free text (long, varied: notes may hold names). Masking errs on the side
of hiding; the site can always look at its own file.

Pure functions over reader rows: the file is read through the same readers as ingestion
(adapter/readers), so what the scan sees is what a mapping will see, with the same column names.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from adapter.readers.base import Row, is_blank

#: Date formats tried, most specific first (Python strptime). Day-first before month-first: every
#: site in the network so far writes day-first; an ambiguous column is reported as such.
DATE_FORMATS = ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%d/%m/%Y",
                "%m/%d/%Y", "%d.%m.%Y", "%d-%m-%Y", "%d/%m/%y", "%Y%m%d%H%M%S", "%Y%m%d%H%M", "%Y%m%d")
_BOOLEAN = {"yes", "no", "y", "n", "si", "sí", "true", "false", "verdadero", "falso", "positive", "negative"}
_INTEGER = re.compile(r"^[+-]?\d+$")
_DECIMAL = re.compile(r"^[+-]?(\d+[.,]\d*|[.,]\d+)$")
_TOKEN_ID = re.compile(r"^(?=.*\d)[A-Za-z0-9][A-Za-z0-9/_.-]*$")
_WORD = re.compile(r"^[^\W\d_][^\W\d_'.-]*$")

#: Header words (accents and case ignored, whole words) that name a person or a record. Spanish and
#: English, as the network's exports are.
_SENSITIVE_HEADER = re.compile(
    r"\b(name|names|surname|forename|given|family|nombre|nombres|apellido|apellidos|paciente|patient name"
    r"|mrn|record|records|expediente|hospital number|nhs|nhs number|curp|rfc|nss|ssn|dni|passport|pasaporte"
    r"|address|direccion|domicilio|phone|telephone|telefono|celular|email|e mail|correo"
    r"|birth|date of birth|dob|nacimiento|fecha de nacimiento|fnac|postcode|zip|codigo postal)\b")
#: Words for a person's name, address or phone in headers of other languages and scripts, matched on
#: the header as written (case-folded), since the accent-stripping fold removes non-Latin letters.
_PERSON_WORDS = ("nome", "sobrenome", "prénom", "prenom", "nom de famille", "vorname", "nachname", "cognome",
                 "imię", "nazwisko", "naam", "isim", "soyad", "имя", "фамилия", "отчество", "фио", "姓名", "名字", "姓",
                 "氏名", "名前", "이름", "성명", "الاسم", "اسم", "שם", "नाम", "telefone", "telefon", "adresse",
                 "indirizzo", "endereço", "地址", "住所", "电话", "電話", "手机", "адрес", "телефон")
#: Person words among the English/Spanish header words (a person, not a record): such a column is
#: identifying (``site.yaml`` ``identifying_columns``), never a key to map.
_PERSON_HEADER = re.compile(
    r"\b(name|names|surname|forename|given|family|nombre|nombres|apellido|apellidos|patient name"
    r"|address|direccion|domicilio|phone|telephone|telefono|celular|email|e mail|correo|postcode|zip|codigo postal)\b")
#: Cell texts that mean "no value" in exports (compared trimmed, case-folded).
NULL_TOKENS = frozenset({"-", "--", "—", "–", "na", "n/a", "n.a.", "nd", "n.d.", ".", "?", "none", "null", "nan",
                         "s/d", "sd", "sin dato", "no aplica", "ninguno", "无", "不详", "/"})
#: Per-process key of the value digests (linking tables): a digest can't be looked up outside this run.
_DIGEST_KEY = os.urandom(32)
_COMPARED = re.compile(r"^\s*(<=|>=|≤|≥|<|>)\s*[0-9.,]")
_FREE_TEXT_HEADER = re.compile(r"\b(comment|comments|note|notes|remark|remarks|details|free text|comentario"
                                r"|comentarios|observacion|observaciones|nota|notas|notes)\b")
#: HL7 v2 fields that identify a person (v2.5.1 §3.4.2 PID, §3.4.5 NK1): ids, name, birth date,
#: address, phone, SSN, licence, mother's maiden name.
_SENSITIVE_HL7 = {"PID-2", "PID-3", "PID-4", "PID-5", "PID-6", "PID-7", "PID-9", "PID-11", "PID-13", "PID-14",
                  "PID-18", "PID-19", "PID-20", "PID-21", "NK1-2", "NK1-4", "NK1-5", "NK1-6", "GT1-3", "GT1-5",
                  "IN1-16", "IN1-19"}


def _fold(text: str) -> str:
    """Lower case, accents removed, non-alphanumerics as spaces: ``"Fecha de Nacimiento"`` ->
    ``"fecha de nacimiento"``."""
    s = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", s).split())


def shape(value: str) -> str:
    """The value's shape: letters as ``A``, digits as ``9``, other characters kept, runs longer
    than 12 cut with ``…``. ``"ENG8971488"`` -> ``"AAA9999999"``."""
    out = "".join("A" if c.isalpha() else "9" if c.isdigit() else c for c in value.strip())
    return out if len(out) <= 12 else out[:12] + "…"


@dataclass
class ColumnProfile:
    """One column: ``type`` is ``empty``, ``integer``, ``decimal``, ``date``, ``boolean``, ``code``
    (text with few distinct values) or ``text``; ``conforming`` counts the non-blank values of that
    type (the rest are listed among the values, or as shapes when masked). ``date_formats`` are the
    strptime formats that read every date value (more than one: ambiguous). ``masked`` is the reason
    values are hidden, or ``None``; then ``top`` holds value shapes, never values. ``minimum`` and
    ``maximum`` are given for numbers and dates when not masked."""

    name: str
    rows: int = 0
    blank: int = 0
    distinct: int = 0
    type: str = "empty"
    conforming: int = 0
    date_formats: list[str] = field(default_factory=list)
    masked: str | None = None
    top: list[tuple[str, int]] = field(default_factory=list)
    minimum: str | None = None
    maximum: str | None = None
    max_length: int = 0
    null_tokens: list[str] = field(default_factory=list)  # texts read as "no value" ('-', 'NA' ...)
    identifying: bool = False  # names a person (name, address, phone): site.yaml identifying_columns
    unique: bool = False  # every row has a value and no value repeats
    #: keyed digests of the values (never printed or written), to find which column of another
    #: sheet links to this one
    digests: frozenset[bytes] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "rows": self.rows, "blank": self.blank, "distinct": self.distinct,
                "type": self.type, "conforming": self.conforming, "dateFormats": self.date_formats,
                "masked": self.masked, "top": [{"value": v, "count": n} for v, n in self.top],
                "minimum": self.minimum, "maximum": self.maximum, "maxLength": self.max_length,
                "nullTokens": self.null_tokens, "identifying": self.identifying, "unique": self.unique}


@dataclass
class ScanReport:
    """The profile of one table (a CSV, an XLSX sheet, an HL7 feed's OBX rows): rows read, rows the
    reader flagged as malformed, and each column in file order."""

    file: str
    format: str
    sheet: str | None
    rows: int = 0
    malformed: int = 0
    columns: list[ColumnProfile] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "format": self.format, "sheet": self.sheet, "rows": self.rows,
                "malformed": self.malformed, "columns": [c.to_json() for c in self.columns]}


def _as_text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat(sep=" ") if value.time() != datetime.min.time() else value.date().isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _kind(value: Any, text: str) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str) and _COMPARED.match(text):
        return "quantity"
    if isinstance(value, (datetime, date)):
        return "date"
    if isinstance(value, int) or _INTEGER.match(text):
        return "integer"
    if isinstance(value, float) or _DECIMAL.match(text):
        return "decimal"
    if _fold(text) in _BOOLEAN:
        return "boolean"
    return "text"


def _date_formats(texts: Iterable[str]) -> list[str]:
    """The formats of :data:`DATE_FORMATS` that read every text. A format without separators
    (``%Y%m%d%H%M``) must also write the text back unchanged, as strptime accepts single-digit
    fields and would read ``201611271100`` as ``%Y%m%d%H%M%S`` too."""
    texts = list(texts)
    out = []
    for fmt in DATE_FORMATS:
        exact = not any(c in fmt for c in "/-.: T")
        try:
            for t in texts:
                d = datetime.strptime(t, fmt)  # noqa: DTZ007  (a format test; no time zone involved)
                if exact and d.strftime(fmt) != t:
                    raise ValueError(t)
        except ValueError:
            continue
        out.append(fmt)
    return out


def _identifier_like(text: str, kind: str) -> bool:
    """A token of letters and digits with a digit (``ENG8971488``, ``BX-0001``), or, in an integer
    column, a number of 6+ digits or with a leading zero (record numbers, not counts or labs)."""
    if kind == "integer":
        digits = text.lstrip("+-")
        return len(digits) >= 6 or (len(digits) > 1 and digits.startswith("0"))
    return kind == "text" and bool(_TOKEN_ID.match(text))


def _person_header(name: str) -> bool:
    """A header that names a person's name, address or phone, in any of the languages above."""
    if name.split("[")[0].split(".")[0] in ("PID-5", "PID-11", "PID-13", "PID-14", "NK1-2", "NK1-4", "NK1-5", "GT1-3"):
        return True
    folded = name.casefold()
    return bool(_PERSON_HEADER.search(_fold(name))) or any(w in folded for w in _PERSON_WORDS)


def _sensitive_header(name: str) -> bool:
    base = name.split("[")[0].split(".")[0]  # HL7 paths: PID-3[MR].1 -> PID-3
    return base in _SENSITIVE_HL7 or bool(_SENSITIVE_HEADER.search(_fold(name))) or _person_header(name)


def _caseless_letters(word: str) -> bool:
    """Letters of a script without case (Han, Hiragana, Hangul, Arabic, Hebrew, Devanagari...)."""
    return bool(word) and all(unicodedata.category(ch) == "Lo" for ch in word)


def _looks_like_names(texts: list[str]) -> bool:
    """Most values are 1-4 capitalised words (``García López``, ``KHAN^Poppy``), letters only; or,
    in a script without case, 1-3 words of 2-6 letters (``王小明``, ``김민준``)."""
    def name_like(t: str) -> bool:
        words = [w for w in re.split(r"[\s^,·・]+", t.strip()) if w]
        if not 1 <= len(words) <= 4:
            return False
        if all(_caseless_letters(w) for w in words):
            return len(words) <= 3 and all(2 <= len(w) <= 6 for w in words) or (len(words) == 1 and len(words[0]) <= 4)
        return all(_WORD.match(w) and (w[0].isupper()) for w in words)
    return sum(name_like(t) for t in texts) >= 0.8 * len(texts)


def profile_column(name: str, values: list[Any], top: int = 10) -> ColumnProfile:
    """Profile one column's values (``None``/blank strings count as blank). See :class:`ColumnProfile`.

    Masking (the module docstring): a sensitive header, or values that are nearly all distinct
    (at least 5 and 80 % of the non-blank ones) and look like identifiers or names, or free text (a
    notes/comments header, or values averaging more than 4 words that are not a short code list).
    Date columns show year-month buckets, never whole dates (dates of events are quasi-identifiers)."""
    p = ColumnProfile(name, rows=len(values))
    filled = [(v, _as_text(v)) for v in values if not is_blank(v)]
    nulls = Counter(t for _, t in filled if t.casefold() in NULL_TOKENS)
    if nulls and sum(nulls.values()) < len(filled):  # all "-": a value of its own, not a placeholder
        p.null_tokens = sorted(nulls)
        filled = [(v, t) for v, t in filled if t.casefold() not in NULL_TOKENS]
    p.blank = len(values) - len(filled)
    texts = [t for _, t in filled]
    counts = Counter(texts)
    p.distinct = len(counts)
    p.max_length = max((len(t) for t in texts), default=0)
    p.unique = bool(filled) and p.blank == 0 and p.distinct == len(filled)
    p.digests = frozenset(hmac.new(_DIGEST_KEY, t.encode(), hashlib.sha256).digest()[:12] for t in texts)
    if not filled:
        return p
    kinds = Counter(_kind(v, t) for v, t in filled)
    fmts: list[str] = []
    if kinds["text"] + kinds["integer"]:
        # text (or YYYYMMDD integers) that all read as dates with one format
        candidates = [t for v, t in filled if not isinstance(v, (datetime, date))]
        fmts = _date_formats(candidates) if candidates else []
        if fmts and kinds["integer"] and not any(f.startswith("%Y%m%d") for f in fmts):
            fmts = []
    if fmts:
        p.type, p.conforming, p.date_formats = "date", len(filled), fmts
    else:
        numeric = kinds["integer"] + kinds["decimal"]
        kind, n = kinds.most_common(1)[0]
        if kinds["quantity"] and numeric + kinds["quantity"] >= 0.9 * len(filled):
            kind, n = "quantity", numeric + kinds["quantity"]  # numbers, some censored: '<0.01', '>95'
        elif numeric >= 0.9 * len(filled):
            kind, n = ("integer", kinds["integer"]) if not kinds["decimal"] else ("decimal", numeric)
        elif kind == "text" and p.distinct <= 20 and p.distinct <= max(2, len(filled) // 2):
            kind = "code"
        p.type, p.conforming = kind, n
    many = p.distinct >= 5 and p.distinct >= 0.8 * len(filled)
    words = sum(len(t.split()) for t in texts) / len(texts)
    if _person_header(name):
        p.masked, p.identifying = "the header names a person (name, address or phone)", True
    elif _sensitive_header(name):
        p.masked = "the header names a person or a record"
    elif many and sum(_identifier_like(t, p.type) for t in texts) >= 0.8 * len(texts):
        p.masked = "values look like identifiers (nearly all distinct)"
    elif many and p.type == "text" and _looks_like_names(texts):
        p.masked, p.identifying = "values look like personal names (nearly all distinct)", True
    elif _FREE_TEXT_HEADER.search(_fold(name)) or words > 4 and (p.type == "text" or p.max_length > 60):
        p.masked = "free text (may hold names)"
    if p.masked:
        p.top = Counter(shape(t) for t in texts).most_common(min(top, 5))
        return p
    if p.type == "date":
        months = Counter(_month(v, t, p.date_formats) for v, t in filled)
        p.top = months.most_common(top)
    else:
        p.top = counts.most_common(top)
    if p.type in ("integer", "decimal", "quantity"):
        nums = sorted(float(t.replace(",", ".")) for v, t in filled if _kind(v, t) in ("integer", "decimal"))
        if nums:
            p.minimum, p.maximum = _num(nums[0]), _num(nums[-1])
    elif p.type == "date":
        keys = sorted(months)
        p.minimum, p.maximum = keys[0], keys[-1]
    return p


def _month(value: Any, text: str, formats: list[str]) -> str:
    """``YYYY-MM`` of a date cell (a ``datetime`` from XLSX, or text in the column's first format)."""
    d = value if isinstance(value, (datetime, date)) else datetime.strptime(text, formats[0])  # noqa: DTZ007
    return f"{d.year:04d}-{d.month:02d}"


def _num(x: float) -> str:
    return str(int(x)) if x.is_integer() else repr(x)


def profile_rows(rows: Iterable[Row], file: str, fmt: str, sheet: str | None, top: int = 10,
                 order: list[str] | None = None) -> ScanReport:
    """Profile a table streamed by a reader. Rows the reader flagged (``problem``) are counted as
    malformed and left out of the column profiles. Columns keep first-seen order, or ``order`` when
    given (HL7 v2 field paths in segment order). Memory grows with the number of cells (a scan is
    for one export, read once)."""
    report = ScanReport(file, fmt, sheet)
    columns: dict[str, list[Any]] = {}
    for row in rows:
        if row.problem:
            report.malformed += 1
            continue
        for k in row.cells:
            columns.setdefault(k, [None] * report.rows)
        for k, col in columns.items():
            col.append(row.cells.get(k))
        report.rows += 1
    names = [k for k in order if k in columns] if order else list(columns)
    # REDCap: "<field>:raw" is shown only where the data dictionary decodes the field (codes differ)
    names = [k for k in names if not (k.endswith(":raw") and columns.get(k[:-4]) == columns[k])]
    report.columns = [profile_column(k, columns[k], top) for k in names if k]
    return report


# ------------------------------------------------------------------------------ draft mapping


_PIPES = {"date": "[date]", "integer": "[integer]", "decimal": "[decimal]", "boolean": "[boolean]",
          "text": "[text]", "empty": "[text]", "quantity": "[quantity]"}


def _table_name(column: str, position: int) -> str:
    """The code table a draft suggests for a code column: the header's ASCII words in snake case
    (``Tipo de donante`` -> ``tipo_de_donante``), else ``column_<position>`` for a header in another
    script. The engineer writes it as ``mappings/<site>/tables/<name>.yaml`` (or points the pipe at a
    shared table in ``mappings/codes/``)."""
    ascii_text = unicodedata.normalize("NFKD", column).encode("ascii", "ignore").decode()
    slug = "_".join(re.findall(r"[a-z0-9]+", ascii_text.casefold()))[:40].strip("_")
    return slug if slug and not slug[0].isdigit() else f"column_{position}"


def _pipe(c: Any, position: int) -> str:
    return f"[{{lookup: {{table: {_table_name(c.name, position)}}}}}]" if c.type == "code" else _PIPES[c.type]


def _yaml_str(s: str) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    import json

    return json.dumps(s, ensure_ascii=False)


_RECORD_HEADERS = (r"\b(mrn|expediente|hospital number|medical record|record number|numero de registro)\b",
                   r"\b(patient id|id paciente|record id|registro|record)\b")


def _patient_column(columns: list[ColumnProfile]) -> ColumnProfile | None:
    """The column most likely to hold the site's own patient identifier: a record-number header
    (in the languages of ``_RECORD_HEADERS``), else a masked identifier-like column with no blanks
    (unique ones first), else the first column whose values are all present and distinct and are
    neither dates nor a person's name. A column that names a person is never the key."""
    hl7 = sorted((c for c in columns if c.name.startswith("PID-3[")), key=lambda c: "[MR]" not in c.name)
    if hl7:
        return hl7[0]
    keys = [c for c in columns if not c.identifying and not c.name.endswith(":raw")]
    for words in _RECORD_HEADERS:  # the hospital's record number first, then any patient id
        for c in keys:
            if re.search(words, _fold(c.name)) or any(w in c.name for w in _RECORD_WORDS):
                return c
    ids = sorted((c for c in keys if c.masked and "identifiers" in c.masked and c.blank == 0), key=lambda c: not c.unique)
    if ids:
        return ids[0]
    return next((c for c in keys if c.unique and c.type in ("text", "integer", "code")), None)


#: Record-number headers in scripts the accent-stripping fold removes (Chinese, Japanese, Korean).
_RECORD_WORDS = ("住院号", "病案号", "病历号", "登记号", "患者编号", "病人编号", "カルテ番号", "患者番号", "등록번호", "환자번호")


def linking_column(rep: ScanReport, key: ColumnProfile) -> ColumnProfile | None:
    """The column of another table whose values are the patient identifiers of ``key`` (the patient
    column of the first table): the one sharing the most values with it, at least half of its own
    values. Values are compared through digests kept in memory, never printed."""
    best, shared = None, 0
    for c in rep.columns:
        if c.identifying or not c.digests:
            continue
        n = len(c.digests & key.digests)
        if n > shared and n >= 0.5 * len(c.digests):
            best, shared = c, n
    return best


#: Header words suggesting which concept a table's rows describe (folded header, or as written for
#: scripts without case), shown on drafted tables other than the first.
_CONCEPT_HEADERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mrd": (r"\b(mrd|erm|residual|residual disease|enfermedad minima)\b", ("微小残留", "残留病")),
    "adverse_event": (r"\b(crs|icans|toxicity|toxicidad|adverse|evento adverso|grade|grado|ctcae|infection|infeccion)\b",
                      ("不良事件", "不良反应", "分级", "毒性", "有害事象")),
    "hsct": (r"\b(hsct|transplant|trasplante|tcph|alo|allo|graft|injerto|donor|donante)\b", ("移植", "供者")),
    "infusion": (r"\b(infusion|infusion|ciclo|cycle|blinatumomab|dose|dosis)\b", ("输注", "周期", "剂量")),
    "follow_up": (r"\b(vital|status|estado vital|last contact|ultimo contacto|follow up|seguimiento|alive|vivo)\b",
                  ("随访", "生存", "末次")),
    "death": (r"\b(death|muerte|fallecimiento|defuncion|cause of death|causa de muerte)\b", ("死亡",)),
    "response": (r"\b(response|respuesta|remission|remision)\b", ("缓解", "疗效")),
}


def proposed_concepts(rep: ScanReport) -> list[tuple[str, list[str]]]:
    """Concepts a table's rows may describe, each with the headers that suggest it (in header order;
    mappings/README.md lists each concept's inputs). A quantity column ('<0.01') with an MRD header
    is the mrd concept's valueQuantity."""
    out: list[tuple[str, list[str]]] = []
    for concept, (pattern, words) in _CONCEPT_HEADERS.items():
        hits = [c.name for c in rep.columns
                if re.search(pattern, _fold(c.name)) or any(w in c.name for w in words)]
        if hits:
            out.append((concept, hits))
    return out


def draft_mapping(reports: list[ScanReport], *, site: str, export: str, reader: dict[str, Any]) -> str:
    """A draft mapping file (YAML text) for the scanned export.

    It loads as is (``adapter ingest --dry-run`` runs on it) once it sits in ``mappings/<site>/``
    next to a ``site.yaml``: a ``patient`` concept on the guessed patient identifier column (plus
    sex and birth date when recognised) is filled in, and every column is listed as a comment with
    its profile and a suggested ``{column, pipe}`` to move into the concept it belongs to. Pipes on
    code columns name a table after the column (:func:`_table_name`), to be written under
    ``mappings/<site>/tables/``.
    """
    lines = [
        f"# Draft mapping written by `adapter scan` from {reports[0].file}. Review every line: the types,",
        "# date formats and the patient column below are guesses from the values. Concepts and their",
        "# inputs are listed in mappings/README.md.",
        f"site: {site}",
        f"export: {export}",
        f"description: {_yaml_str('TODO: what this export is, who sends it, one row per what')}",
        "reader:",
    ]
    for k, v in reader.items():
        if isinstance(v, list):
            lines.append(f"  {k}: [{', '.join(_yaml_str(x) for x in v)}]")
        else:
            lines.append(f"  {k}: {_yaml_str(v) if isinstance(v, str) else v}")
    lines.append("sheets:")
    # The first table with a patient column gets the patient concept; the others are drafted as
    # comments (a Patient from two sheets with different content would conflict), to be given the
    # concepts their rows describe.
    active = next((r for r in reports if _patient_column(r.columns)), reports[0])
    key = _patient_column(active.columns)
    for rep in reports:
        if rep is active:
            lines += _sheet_block(rep, key)
            continue
        block = _sheet_block(rep, linking_column(rep, key) if key else None)
        lines += ["  # " + ln[2:] if ln.startswith("  ") else "# " + ln for ln in block]
    return "\n".join(lines) + "\n"


def _sheet_block(rep: ScanReport, pat: ColumnProfile | None) -> list[str]:
    lines = ["  - " + (f"sheet: {_yaml_str(rep.sheet)}\n    resources:" if rep.sheet else "resources:")]
    if pat is None:
        lines.append("      # TODO: no column looks like the site's patient identifier; name it below")
    for concept, headers in proposed_concepts(rep):
        lines.append(f"      # proposed concept: {concept} (headers {', '.join(_yaml_str(h) for h in headers)})")
    col = pat.name if pat else "TODO"
    lines += ["      - concept: patient", "        fields:", f"          patient: {{column: {_yaml_str(col)}, pipe: [text]}}"]
    found: dict[str, str] = {}
    for c in rep.columns:
        folded = _fold(c.name)
        if c.name.endswith(":raw"):
            continue
        if (re.search(r"\b(sex|sexo|gender|genero)\b", folded) or c.name.startswith("PID-8") or "性别" in c.name) \
                and c.type == "code" \
                and c.distinct <= 4:
            found.setdefault("gender", f"{{column: {_yaml_str(c.name)}, pipe: [{{lookup: {{table: gender}}}}]}}")
        elif c.type == "date" and (re.search(r"\b(birth|dob|nacimiento|fnac)\b", folded) or c.name.startswith("PID-7")
                                   or "出生" in c.name):
            found.setdefault("birthDate", f"{{column: {_yaml_str(c.name)}, pipe: [date]}}")
    lines += [f"          {k}: {v}" for k, v in found.items()]
    lines.append("      # Columns found: type, blanks/rows, distinct values; a suggested field for each.")
    for position, c in enumerate(rep.columns, start=1):
        about = f"{c.type}" + (f" {'|'.join(c.date_formats)}" if c.date_formats else "")
        about += f", {c.blank}/{c.rows} blank, {c.distinct} distinct" + (", masked" if c.masked else "")
        if c.null_tokens:
            about += f", no-value texts {', '.join(_yaml_str(t) for t in c.null_tokens)}"
        lines.append(f"      #   {c.name}: {about}")
        if c.identifying:  # site.yaml lists it: a mapping that reads it is refused
            lines.append("      #     identifies a person (site.yaml identifying_columns): never mapped")
        else:
            lines.append(f"      #     {{column: {_yaml_str(c.name)}, pipe: {_pipe(c, position)}}}")
    return [x for ln in lines for x in ln.split("\n")]


def reader_block(fmt: str, reports: list[ScanReport], *, encoding: str | None = None,
                 delimiter: str | None = None, data_dictionary: str | None = None) -> dict[str, Any]:
    """The draft mapping's ``reader`` block: the format, the encoding and delimiter the reader
    settled on, and the date formats seen (the first format of each date column, in order)."""
    out: dict[str, Any] = {"format": fmt}
    if encoding:
        out["encoding"] = encoding
    if delimiter:
        out["delimiter"] = delimiter
    if data_dictionary:
        out["data_dictionary"] = data_dictionary
    fmts: list[str] = []
    nulls: set[str] = set()
    for rep in reports:
        for c in rep.columns:
            if c.date_formats and c.date_formats[0] not in fmts:
                fmts.append(c.date_formats[0])
            nulls.update(c.null_tokens)
    if fmts:
        out["date_format"] = fmts if len(fmts) > 1 else fmts[0]
    if nulls:  # texts read as "no value" in every column ('-', 'NA'): see ReaderSpec.null_values
        out["null_values"] = sorted(nulls)
    return out


def identifying_columns(reports: list[ScanReport]) -> list[str]:
    """Columns that name a person (a name, address or phone header, or values that look like
    personal names), in table order, for ``site.yaml`` ``identifying_columns``."""
    out: list[str] = []
    for rep in reports:
        out += [c.name for c in rep.columns if c.identifying and c.name not in out]
    return out


def draft_site(site: str, identifying: list[str] | None = None) -> str:
    """A draft ``site.yaml`` (YAML text) that loads as is; its TODOs name what to fill in. The MRD
    threshold is the seed papers' 0.01 % (10^-4); how a result exactly at it reads differs by
    laboratory, so it must be confirmed with the site. ``identifying`` (from
    :func:`identifying_columns`) becomes ``identifying_columns``: mappings that read one are refused."""
    lines = [
        f"site: {site}",
        f"name: {_yaml_str('TODO: the hospital and study')}",
        "country: ZZ  # TODO: ISO 3166-1 alpha-2 code",
        f"source: {_yaml_str('TODO: where these conventions come from (paper, data dictionary, lab manual)')}",
        "mrd:",
        "  negative_below_percent: 0.01",
        "  at_threshold: positive  # TODO: confirm with the laboratory whether exactly 0.01 % is negative",
    ]
    if identifying:
        lines.append("# columns that name a person: a mapping that reads one is refused when it loads")
        lines.append(f"identifying_columns: [{', '.join(_yaml_str(c) for c in identifying)}]")
    return "\n".join(lines) + "\n"
