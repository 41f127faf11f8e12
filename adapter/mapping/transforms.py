"""Named, pure transforms that mapping files call by name.

Each transform takes the raw cell value (``str``, number, ``datetime`` or an earlier step's output),
keyword arguments from the mapping file, and the :class:`TransformContext` (the reader's declared
conventions and the code tables). It returns a Python value and raises :class:`TransformError` naming
the value when it cannot. Transforms do no I/O. ``mappings/README.md`` documents every one of them
(a test enforces it).

A blank input never reaches a transform: the engine turns it into ``None`` first.
"""

from __future__ import annotations

import inspect
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from adapter.errors import TransformError
from adapter.mapping import patterns

# ---------------------------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class MRDValue:
    """An MRD (or any percent) result: ``value`` in percent of nucleated cells, with an optional
    FHIR ``Quantity.comparator`` (``<``, ``<=``, ``>=``, ``>``; FHIR R4 §2.24.0.11, required binding).

    ``value`` is ``None`` for a result that is detected but below the quantitative range
    ("positive not quantifiable", seed 004): positive, with no number (see profiles/README.md)."""

    value: Decimal | None
    comparator: str | None = None

    @property
    def quantified(self) -> bool:
        return self.value is not None


@dataclass(frozen=True, slots=True)
class Age:
    """An age as the source wrote it: ``value`` in ``unit`` (UCUM ``a`` years, ``mo`` months,
    ``wk`` weeks or ``d`` days); a decimal value (``7.5`` years) is kept exact."""

    value: int | Decimal
    unit: str


@dataclass(frozen=True, slots=True)
class HLAMatch:
    """An HLA match as the site wrote it (``text``, e.g. ``5/10``), with the alleles ``matched`` of
    ``typed`` and the match category of the project's hla-match CodeSystem: ``identical`` when every
    typed allele matches, ``haploidentical`` at half or less (one shared haplotype: 5/10, 4/8, 3/6),
    ``mismatched`` in between (9/10, 7/8)."""

    text: str
    matched: int
    typed: int
    category: str


@dataclass(frozen=True, slots=True)
class Measured:
    """A number read with its comparator (``<0.01``, ``>95``, ``≤5``): ``value`` as written and the
    FHIR ``Quantity.comparator`` (``<``, ``<=``, ``>=``, ``>``; R4 §2.24.0.11, required binding),
    ``None`` for an exact value. A censored value is never turned into an exact one."""

    value: Decimal
    comparator: str | None = None


@dataclass(frozen=True)
class Concept:
    """A code-table result: a FHIR Coding (``system``, ``code``, ``display``) plus any extra
    attributes the table entry declares (e.g. ``relapse_number``)."""

    system: str | None
    code: str | None
    display: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def coding(self) -> dict[str, str]:
        """The FHIR ``Coding`` JSON for this concept."""
        out = {"system": self.system, "code": self.code, "display": self.display}
        return {k: v for k, v in out.items() if v is not None}


_MEMO_LIMIT = 10_000


class CodeTable:
    """A code table loaded from a data file (see ``adapter.spec``): source value -> :class:`Concept`.

    ``normalize`` is ``exact`` or ``casefold`` (case-, accent- and whitespace-insensitive). ``then``
    names the table a value missing here is looked up in next (e.g. a site's own spellings, then
    every CTCAE v5.0 term in ``ctcae_v5``); :func:`lookup` follows it.
    """

    def __init__(self, name: str, entries: Mapping[str, Concept | None], normalize: str = "casefold",
                 source: str = "", then: str | None = None) -> None:
        self.name, self.normalize, self.source, self.then = name, normalize, source, then
        self._entries = {self._key(k): v for k, v in entries.items()}
        self._memo: dict[str, Concept | None] = {}

    def concepts(self) -> list[Concept]:
        """Every concept the table maps to (entries mapped to ``null`` left out), in file order."""
        return [c for c in self._entries.values() if c is not None]

    def _key(self, value: str) -> str:
        if self.normalize == "exact":
            return value
        folded = unicodedata.normalize("NFKD", value.casefold())
        return " ".join("".join(c for c in folded if not unicodedata.combining(c)).split())

    def get(self, value: Any) -> Concept | None:
        """Look up a value. Raises :class:`TransformError` when the value is not in the table.

        An entry mapped to ``null`` in the data file means "known value, deliberately no code" and
        returns ``None``.
        """
        raw = str(value)
        try:
            return self._memo[raw]
        except KeyError:
            pass
        key = self._key(raw)
        if key not in self._entries:
            raise TransformError(value, f"no entry in code table '{self.name}'")
        if len(self._memo) < _MEMO_LIMIT:  # source spellings repeat; the table is small and immutable
            self._memo[raw] = self._entries[key]
        return self._entries[key]


@dataclass(frozen=True)
class TransformContext:
    """What a transform may know besides its input: the reader's declared conventions and the code
    tables visible to the mapping file."""

    decimal: str = "."
    date_formats: tuple[str, ...] = ("%d/%m/%Y",)
    tables: Mapping[str, CodeTable] = field(default_factory=dict)


Transform = Callable[..., Any]
_REGISTRY: dict[str, Transform] = {}


def transform(name: str) -> Callable[[Transform], Transform]:
    """Register a function as the transform called ``name`` in mapping files."""

    def deco(fn: Transform) -> Transform:
        _REGISTRY[name] = fn
        return fn

    return deco


def get_transform(name: str) -> Transform:
    """Return a registered transform. Raises ``KeyError`` if there is none of that name."""
    return _REGISTRY[name]


def transform_names() -> list[str]:
    """All registered transform names, sorted."""
    return sorted(_REGISTRY)


def check_arguments(name: str, args: Mapping[str, Any]) -> None:
    """Check at load time that ``args`` fit the transform's keyword parameters.

    Raises:
        KeyError: unknown transform; TypeError: an argument is unknown or a required one is missing.
    """
    fn = _REGISTRY[name]
    inspect.signature(fn).bind(None, **args, ctx=TransformContext())


# ------------------------------------------------------------------------------------------- strings


@transform("text")
def text(value: Any, *, ctx: TransformContext) -> str:
    """Any value as trimmed text; inner whitespace runs collapse to one space. Integers written by
    Excel as ``7.0`` become ``"7"``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    out = " ".join(str(value).split())
    if not out:
        raise TransformError(value, "empty text")
    return out


@transform("regex")
def regex(value: Any, *, ctx: TransformContext, pattern: str, group: int | str = 1,
          optional: bool = False, ignorecase: bool = True) -> str | None:
    """Capture ``group`` of the first match of ``pattern`` (Python ``re`` syntax) in the text; the
    pattern runs with a time limit (adapter/mapping/patterns.py).

    No match raises, unless ``optional: true``, which yields ``None`` (the field is then absent).
    """
    m = patterns.search(pattern, str(value), ignorecase)
    if m is None:
        if optional:
            return None
        raise TransformError(value, f"does not match /{pattern}/")
    captured = m.group(group)
    return captured.strip() if captured is not None else None


@transform("split")
def split(value: Any, *, ctx: TransformContext, sep: str, index: int) -> str:
    """Piece ``index`` (0-based; negative counts from the end) of the text split on ``sep``."""
    parts = [p.strip() for p in str(value).split(sep)]
    try:
        piece = parts[index]
    except IndexError:
        raise TransformError(value, f"has no piece {index} when split on {sep!r}") from None
    if not piece:
        raise TransformError(value, f"piece {index} is empty")
    return piece


@transform("matches")
def matches(value: Any, *, ctx: TransformContext, pattern: str, ignorecase: bool = True) -> bool:
    """``True`` when ``pattern`` occurs in the text, else ``False`` (never raises)."""
    return patterns.search(pattern, str(value), ignorecase) is not None


@transform("boolean")
def boolean(value: Any, *, ctx: TransformContext, true_values: list[str], false_values: list[str]) -> bool:
    """Map the listed spellings (case- and accent-insensitive) to ``True``/``False``; any other
    value raises (it is never defaulted)."""
    key = _fold(str(value))
    if key in {_fold(t) for t in true_values}:
        return True
    if key in {_fold(f) for f in false_values}:
        return False
    raise TransformError(value, f"is neither one of {true_values} nor one of {false_values}")


@transform("map")
def map_(value: Any, *, ctx: TransformContext, values: dict[str, Any]) -> Any:
    """Replace a value by the one ``values`` lists for it (keys compared case- and
    accent-insensitively): a small, local recoding such as NIH chronic GVHD severity ``mild`` -> 1.
    Use a code table when the result is a code. A value not listed raises; it is never defaulted."""
    folded = {_fold(str(k)): v for k, v in values.items()}
    key = _fold(str(value))
    if key not in folded:
        raise TransformError(value, f"is not one of {list(values)}")
    return folded[key]


@transform("constant")
def constant(value: Any, *, ctx: TransformContext, to: Any) -> Any:
    """Replace any present (non-blank) value by the constant ``to``; used when the presence of a
    cell is the information (a relapse date column means "relapse")."""
    return to


@transform("lookup")
def lookup(value: Any, *, ctx: TransformContext, table: str) -> Concept | None:
    """Code-table lookup: the value's entry in the named code table (a site table overrides a shared
    ``mappings/codes/`` one of the same name), else in the table its ``then`` names, and so on. An
    unmapped value raises naming every table tried; it is never defaulted."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    tried: list[str] = []
    name: str | None = table
    while name is not None and name not in tried:
        try:
            code_table = ctx.tables[name]
        except KeyError:
            raise TransformError(value, f"code table '{name}' is not loaded") from None
        tried.append(name)
        try:
            return code_table.get(value)
        except TransformError:
            name = code_table.then
    raise TransformError(value, "no entry in code table " + " nor ".join(f"'{t}'" for t in tried), code="code-invalid")


# ------------------------------------------------------------------------------------------- numbers


def _to_decimal(raw: str, decimal_sep: str) -> Decimal:
    s = raw.strip().replace("\u00a0", "").replace(" ", "")
    if decimal_sep == ",":
        if "." in s and "," in s:
            s = s.replace(".", "")
        s = s.replace(",", ".")
    elif "," in s and "." not in s and re.fullmatch(r"-?\d+,\d+", s):
        s = s.replace(",", ".")  # a decimal comma in a dot-declared file: unambiguous when alone
    try:
        d = Decimal(s)
    except InvalidOperation:
        raise TransformError(raw, "is not a number") from None
    if not d.is_finite():
        raise TransformError(raw, "is not a finite number")
    return d


@transform("decimal")
def decimal(value: Any, *, ctx: TransformContext, min: float | None = None,  # noqa: A002
            max: float | None = None) -> Decimal:  # noqa: A002
    """A number, using the reader's declared decimal separator (``,`` or ``.``). Optional ``min`` and
    ``max`` bound it (inclusive)."""
    if isinstance(value, bool):
        raise TransformError(value, "is not a number")
    d = Decimal(str(value)) if isinstance(value, int | float) else _to_decimal(str(value), ctx.decimal)
    if not d.is_finite():
        raise TransformError(value, "is not a finite number")
    if min is not None and d < Decimal(str(min)):
        raise TransformError(value, f"is below the minimum {min}")
    if max is not None and d > Decimal(str(max)):
        raise TransformError(value, f"is above the maximum {max}")
    return d


@transform("integer")
def integer(value: Any, *, ctx: TransformContext, min: int | None = None,  # noqa: A002
            max: int | None = None) -> int:  # noqa: A002
    """A whole number (``"3"``, ``3``, ``3.0``). Optional inclusive ``min``/``max``."""
    d = decimal(value, ctx=ctx)
    if d != d.to_integral_value():
        raise TransformError(value, "is not a whole number")
    n = int(d)
    if (min is not None and n < min) or (max is not None and n > max):
        raise TransformError(value, f"is outside {min}..{max}")
    return n


_PERCENT = re.compile(r"^\s*(<=|>=|≤|≥|<|>)?\s*([0-9][0-9.,\s]*|[.,][0-9]+)\s*(%)?\s*$")
_COMPARATORS = {"≤": "<=", "≥": ">="}


def _compared(value: Any, pattern: re.Pattern[str], ctx: TransformContext, what: str) -> tuple[Decimal, str | None]:
    """``(number, FHIR comparator or None)`` of a cell: an Excel number as is, text through
    ``pattern`` (group 1 the comparator, group 2 the number, the reader's decimal separator).
    Raises :class:`TransformError` with ``what`` when the text does not match, or for a number
    that is not finite."""
    if isinstance(value, int | float):
        number, comparator = Decimal(str(value)), None
    else:
        m = pattern.match(str(value))
        if m is None:
            raise TransformError(value, what)
        comparator = _COMPARATORS.get(m.group(1) or "", m.group(1)) or None
        number = _to_decimal(m.group(2), ctx.decimal)
    if not number.is_finite():
        raise TransformError(value, "is not a finite number")
    return number, comparator


@transform("mrd_percent")
def mrd_percent(value: Any, *, ctx: TransformContext, scale: str = "percent") -> MRDValue:
    """An MRD/percent result with its comparator: ``"<0,01"``, ``"0,01%"``, ``"<0.01"``,
    ``"24.56%"``, ``"≤0.01 %"`` or an Excel number. Output: :class:`MRDValue` in percent of nucleated
    cells (FHIR ``Quantity`` with UCUM ``%``).

    ``scale: fraction`` reads plain numbers as fractions (``0.0001`` -> 0.01 %). Values outside
    0-100 % raise. Convention: MRD negativity is < 0.01 % (10^-4), seed papers 000 and 002.
    """
    if isinstance(value, bool):
        raise TransformError(value, "is not an MRD value")
    number, comparator = _compared(value, _PERCENT, ctx, "is not a percent value such as '<0,01' or '24.56%'")
    if scale == "fraction":
        number = number * 100
    if number < 0 or number > 100:
        raise TransformError(value, "is outside 0-100 %")
    return MRDValue(number, comparator or None)


_SUPERSCRIPT = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")
_SCIENTIFIC = re.compile(r"^\s*(<=|>=|≤|≥|<|>)?\s*(\d+(?:[.,]\d+)?)\s*(?:[x×*]\s*10\s*\^?\s*|[eE])([-−]\s*\d{1,2})\s*$")


_NOT_QUANTIFIABLE = ("positive not quantifiable", "positive, not quantifiable", "pos not quantifiable",
                     "positive below quantitative range", "pnq")


@transform("mrd_scientific")
def mrd_scientific(value: Any, *, ctx: TransformContext,
                   not_quantifiable: list[str] | None = None) -> MRDValue:
    """An RQ-PCR MRD level written as leukaemic cells per cell in scientific notation:
    ``"2 x 10-3"``, ``"<1 x 10-4"``, ``"5 × 10⁻⁴"``, ``"1x10^-4"``, ``"1E-4"``. Output:
    :class:`MRDValue` in percent of nucleated cells (2 x 10-3 -> 0.2 %; <1 x 10-4 -> <0.01 %, MRD
    negative at the 10^-4 threshold, seed 004).

    "Positive not quantifiable" (detected below the quantitative range; EuroMRD guidelines, seed 004)
    gives ``MRDValue(None)``: positive with no number. The texts recognised, case-insensitively, are
    ``not_quantifiable`` (default: "positive not quantifiable", "positive, not quantifiable", "PNQ"
    and close variants). Any other text raises :class:`TransformError`."""
    text = " ".join(str(value).split()).casefold()
    if text in (t.casefold() for t in (not_quantifiable or _NOT_QUANTIFIABLE)):
        return MRDValue(None)
    m = _SCIENTIFIC.match(str(value).translate(_SUPERSCRIPT))
    if m is None:
        raise TransformError(value, "is not an MRD level such as '2 x 10-3', '<1 x 10-4' or 'positive not quantifiable'")
    comparator = _COMPARATORS.get(m.group(1) or "", m.group(1))
    mantissa = _to_decimal(m.group(2).replace(",", "."), ".")
    exponent = int(m.group(3).replace("−", "-").replace(" ", ""))
    percent = (mantissa * Decimal(10) ** exponent * 100).normalize()
    if percent < 0 or percent > 100:
        raise TransformError(value, "is outside 0-100 %")
    return MRDValue(Decimal(format(percent, "f")), comparator or None)


# --------------------------------------------------------------------------------------------- dates


# The same sub-patterns CPython's _strptime uses for these directives, so the fast path accepts
# exactly what datetime.strptime accepts for formats made only of them and literal separators.
_DIRECTIVES = {"d": r"(3[01]|[12]\d|0[1-9]|[1-9]| [1-9])", "m": r"(1[0-2]|0[1-9]|[1-9])", "Y": r"(\d\d\d\d)"}


@lru_cache(maxsize=64)
def _fast_format(fmt: str) -> tuple[re.Pattern[str], tuple[str, ...]] | None:
    """A compiled regex and the directive order for a day/month/year-only ``strptime`` format (such
    as ``%d/%m/%Y``), or ``None`` when the format needs ``strptime`` itself."""
    parts = re.split(r"(%.)", fmt)
    pattern, order = "", []
    for part in parts:
        if part.startswith("%"):
            d = part[1:]
            if d not in _DIRECTIVES or d in order:
                return None
            pattern += _DIRECTIVES[d]
            order.append(d)
        elif part.strip() != part or "%" in part:
            return None  # whitespace in a format has strptime's own matching rules
        else:
            pattern += re.escape(part)
    if sorted(order) != ["Y", "d", "m"]:
        return None
    return re.compile(pattern), tuple(order)


def _parse_date(s: str, fmt: str) -> date:
    """``datetime.strptime(s, fmt).date()``, with a fast path for day/month/year formats.
    Raises ``ValueError`` as strptime does."""
    fast = _fast_format(fmt)
    if fast is None:
        return datetime.strptime(s, fmt).date()  # noqa: DTZ007 (calendar dates, no time zone)
    m = fast[0].fullmatch(s)
    if m is None:
        raise ValueError(s)
    parts = dict(zip(fast[1], m.groups(), strict=True))
    return date(int(parts["Y"]), int(parts["m"]), int(parts["d"]))


def _as_date(value: Any, formats: tuple[str, ...]) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise TransformError(value, "is a number, not a date (is the column formatted as a date in Excel?)")
    s = str(value).strip()
    for fmt in formats:
        try:
            return _parse_date(s, fmt)
        except ValueError:
            continue
    raise TransformError(value, f"is not a date in format {' or '.join(formats)}")


@transform("date")
def date_(value: Any, *, ctx: TransformContext, format: str | list[str] | None = None) -> date:  # noqa: A002
    """A calendar date. Excel date cells pass through; text is parsed with ``format`` (``strptime``
    codes, one or a list) or else the reader's declared ``date_format`` — day first (``%d/%m/%Y``)
    by default, as Mexican and UK exports write it. ``03/05/2009`` is 3 May 2009, never 5 March."""
    formats = ctx.date_formats if format is None else ((format,) if isinstance(format, str) else tuple(format))
    return _as_date(value, formats)


_OFFSET = re.compile(r"([+-])\s*(\d{1,5})")


@transform("day_offset")
def day_offset(value: Any, *, ctx: TransformContext, reference: Any) -> date:
    """The date ``N`` days after (``+N``) or before (``-N``) a reference date, from text such as
    ``"+380"`` or ``"Dead because of pneumonia on day +116 of HSCT"``. ``reference`` is usually
    ``{column: <date column>}``; day 0 is the reference day itself (HSCT day-numbering convention).
    A missing reference raises."""
    if reference is None or (isinstance(reference, str) and not reference.strip()):
        raise TransformError(value, "has a day offset but the reference date is empty")
    m = _OFFSET.search(str(value))
    if m is None:
        raise TransformError(value, "has no day offset such as '+380'")
    days = int(m.group(2)) * (1 if m.group(1) == "+" else -1)
    return _as_date(reference, ctx.date_formats) + timedelta(days=days)


_AGE = re.compile(
    r"^\s*(\d{1,3}(?:[.,]\d{1,4})?)\s*(years?|yrs?|y|a|años?|anos?|months?|mos?|m|meses?|mes|weeks?|w|semanas?|days?|d|días?|dias?)?\.?\s*$",
    re.IGNORECASE,
)
_AGE_UNITS = {"y": "a", "a": "a", "m": "mo", "w": "wk", "d": "d", "s": "wk"}
_UNIT_ARG = {"year": "a", "month": "mo", "week": "wk", "day": "d"}


@transform("age")
def age(value: Any, *, ctx: TransformContext, unit: str | None = None) -> Age:
    """An age: ``"7 months"``, ``"12 years"``, ``"3a"`` (años), ``"11 meses"``, ``"2 y"``, decimal
    ages too (``"7.5 years"``, ``"0,8 años"``, an Excel number). A bare number takes ``unit``
    (``year``, ``month``, ``week`` or ``day``); without it a bare number raises (its unit is
    unknown). Output :class:`Age` with UCUM unit ``a``, ``mo``, ``wk`` or ``d``; the value keeps its
    decimals (the Patient's birth date is then given to the month, adapter/mapping/patient.py)."""
    if unit is not None and unit not in _UNIT_ARG:
        raise TransformError(value, f"unit must be one of {', '.join(_UNIT_ARG)}")
    if isinstance(value, bool):
        raise TransformError(value, "is not an age")
    text = format(Decimal(str(value)), "f") if isinstance(value, int | float) else str(value)
    m = _AGE.match(text)
    if m is None or (m.group(2) is None and unit is None):
        raise TransformError(value, "is not an age such as '7 months', '3a' or '7.5 years'"
                             + ("" if m is None else " (a bare number needs the transform's unit)"))
    number = _to_decimal(m.group(1), "," if "," in m.group(1) else ".")
    if m.group(2) is None:
        code = _UNIT_ARG[str(unit)]
    else:
        word = _fold(m.group(2))
        code = "mo" if word.startswith(("mo", "me")) or word == "m" else _AGE_UNITS[word[0]]
    return Age(int(number) if number == number.to_integral_value() else number.normalize(), code)


_HLA = re.compile(r"^\s*(\d{1,2})\s*/\s*(\d{1,2})\s*$")


@transform("hla")
def hla(value: Any, *, ctx: TransformContext) -> HLAMatch:
    """An HLA match written as alleles matched of alleles typed: ``5/10``, ``8/8``, ``10 / 10``.
    Output :class:`HLAMatch`: the text as written and its category (identical, haploidentical,
    mismatched). A written day-like value Excel turned into a date is refused (write it as text)."""
    if isinstance(value, date | datetime):
        raise TransformError(value, "is a date: Excel read '5/10' as a date; store the column as text")
    m = _HLA.match(str(value))
    if m is None:
        raise TransformError(value, "is not an HLA match such as '5/10' or '8/8'")
    matched, typed = int(m.group(1)), int(m.group(2))
    if typed == 0 or matched > typed:
        raise TransformError(value, "matches more alleles than were typed")
    category = "identical" if matched == typed else "haploidentical" if matched * 2 <= typed else "mismatched"
    return HLAMatch(f"{matched}/{typed}", matched, typed, category)


@transform("lookup_each")
def lookup_each(value: Any, *, ctx: TransformContext, table: str, sep: str = "+") -> list[Concept]:
    """Several coded values in one cell, e.g. a combined graft ``Médula ósea + Sangre periférica``:
    the text split at ``sep`` (also at ``/`` and ``,`` when ``sep`` is ``+``), each part looked up in
    ``table`` like ``lookup``. An unmapped part is an error, never dropped."""
    parts = [p.strip() for p in re.split(r"\s*[+/,]\s*" if sep == "+" else re.escape(sep), str(value)) if p.strip()]
    if not parts:
        raise TransformError(value, "has no value to look up")
    out = []
    for part in parts:
        concept = lookup(part, ctx=ctx, table=table)
        if concept is None:
            raise TransformError(value, f"part {part!r} is mapped to no code")
        if concept not in out:
            out.append(concept)
    return out


#: Days in a calendar unit, for durations written in those units (the convention of every
#: examples/*/EXPECTED.md and of the outcome figures: a month is 30.4375 days, a year 365.25).
UNIT_DAYS = {"day": Decimal(1), "week": Decimal(7), "month": Decimal("30.4375"), "year": Decimal("365.25")}


@transform("offset")
def offset(value: Any, *, ctx: TransformContext, reference: Any, unit: str = "day") -> date:
    """The date ``value`` ``unit``s after a reference date (before it when negative): follow-up
    written as ``36.5`` months from the start of treatment, a time to event in weeks. ``value`` is a
    number (decimals allowed, the reader's decimal separator); ``reference`` is usually
    ``{column: <date column>}``; ``unit`` is ``day``, ``week``, ``month`` (30.4375 days) or ``year``
    (365.25 days). The result is rounded to the nearest day, so a date derived from months is
    approximate (within half a day of the stated months, whatever the calendar); the outcome figures
    count months the same way, so the duration they compute is the one the site wrote. A missing
    reference raises."""
    if unit not in UNIT_DAYS:
        raise TransformError(value, f"unit must be one of {', '.join(UNIT_DAYS)}")
    if reference is None or (isinstance(reference, str) and not reference.strip()):
        raise TransformError(value, "has a duration but the reference date is empty")
    amount = decimal(value, ctx=ctx)
    days = int((amount * UNIT_DAYS[unit]).to_integral_value(rounding="ROUND_HALF_EVEN"))
    return _as_date(reference, ctx.date_formats) + timedelta(days=days)


_MEASURED = re.compile(r"^\s*(<=|>=|≤|≥|<|>)?\s*([-+]?[0-9][0-9.,\s]*|[-+]?[.,][0-9]+)\s*$")


@transform("quantity")
def quantity(value: Any, *, ctx: TransformContext, min: float | None = None,  # noqa: A002
             max: float | None = None) -> Measured:  # noqa: A002
    """A number with an optional comparator, wherever a censored value can occur: ``"<0,01"``,
    ``">95"``, ``"≤5"``, ``"12"`` or an Excel number. Output :class:`Measured` (value and FHIR
    comparator). Optional inclusive ``min``/``max`` bound the number as written."""
    if isinstance(value, bool):
        raise TransformError(value, "is not a number")
    number, comparator = _compared(value, _MEASURED, ctx, "is not a number such as '12', '<0,01' or '>95'")
    if (min is not None and number < Decimal(str(min))) or (max is not None and number > Decimal(str(max))):
        raise TransformError(value, f"is outside {min}..{max}")
    return Measured(number, comparator or None)


def _fold(s: str) -> str:
    folded = unicodedata.normalize("NFKD", s.casefold())
    return " ".join("".join(c for c in folded if not unicodedata.combining(c)).split())
