"""HL7 v2 reader: a file of ORU^R01 messages -> one row per OBX (result), parsed with python-hl7.

Messages may be separated by nothing (segments end in ``\\r``, HL7 v2.5.1 §2.5.1 "segment
terminator"), by newlines, or by MLLP framing bytes; every ``MSH`` segment starts a message. The
delimiters come from each message's own MSH-1/MSH-2 (python-hl7 reads them), and field values are
unescaped (§2.7: ``\\F\\``, ``\\S\\``, ``\\T\\``, ``\\R\\``, ``\\E\\``), so a mapping sees the text the
sender meant.

Columns are HL7 field paths, ``SEG-F[R].C.S``:

- ``SEG`` a segment id. ``OBX`` is the row's own result, ``OBR`` the order it belongs to (the last
  OBR before it); any other segment is the message's first one of that id (``MSH``, ``PID``...).
- ``F`` the field number (MSH-1 is the field separator, as in the standard).
- ``[R]`` optional repetition: a number (1-based, default 1), or an identifier type code, which
  picks the repetition whose component 5 (CX.5 "identifier type code") equals it, e.g.
  ``PID-3[MR].1`` is the medical record number and ``PID-3[NH].1`` the NHS number.
- ``.C`` and ``.S`` optional component and sub-component (1-based). Without them the whole field
  (or component) is returned with its separators.

A value that is absent gives ``None`` (a blank cell). Each row's ``row`` is the message's number in
the file and ``segment`` names the OBX, e.g. ``"OBX 2 (segment 5), MSH-10 MRD161127001"``. A message
that cannot be parsed or has no PID/OBR/OBX gives one row with a ``problem`` (a row issue), never a
crash or a silent skip.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import hl7

from adapter.errors import ReaderError
from adapter.readers.base import Reader, Row, register

_PATH = re.compile(r"^(?P<seg>[A-Z][A-Z0-9]{2})-(?P<field>\d{1,3})(?:\[(?P<rep>[A-Za-z0-9_-]+)\])?"
                   r"(?:\.(?P<comp>\d{1,3}))?(?:\.(?P<sub>\d{1,3}))?$")
_MSH = re.compile(rb"(?:^|[\r\n\x0b\x1c])MSH(?=[^A-Za-z0-9])")


@dataclass(frozen=True)
class FieldPath:
    """A parsed column path (see the module docstring). Raises ``ValueError`` for bad syntax."""

    segment: str
    field: int
    repetition: str | None
    component: int | None
    subcomponent: int | None

    @classmethod
    def parse(cls, text: str) -> FieldPath:
        m = _PATH.match(text.strip())
        if m is None or int(m["field"]) < 1 or (m["comp"] and int(m["comp"]) < 1) or (m["sub"] and int(m["sub"]) < 1):
            raise ValueError(f"{text!r} is not an HL7 v2 field path (SEG-F[R].C.S, e.g. PID-3[MR].1 or OBX-5)")
        return cls(m["seg"], int(m["field"]), m["rep"], int(m["comp"]) if m["comp"] else None,
                   int(m["sub"]) if m["sub"] else None)


def split_messages(data: bytes) -> list[bytes]:
    """The messages of a file, each starting at its ``MSH`` segment, with MLLP framing and line
    breaks between segments normalised to ``\\r``."""
    data = data.replace(b"\x0b", b"").replace(b"\x1c", b"\r").replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    starts = [m.start() + (0 if m.group().startswith(b"MSH") else 1) for m in _MSH.finditer(data)]
    if not starts:
        return []
    # a blank line between segments is an empty segment: skipped, not a parse error (a sender that
    # ends lines with \r\n\r\n, or a file edited by hand)
    return [b"\r".join(seg for seg in data[a:b].split(b"\r") if seg.strip())
            for a, b in zip(starts, [*starts[1:], len(data)], strict=True)]


def _text(msg: hl7.Message, node: Any) -> str | None:
    text = msg.unescape(str(node)) if node is not None else ""
    return text if text.strip() else None


def field_value(msg: hl7.Message, segment: hl7.Segment | None, path: FieldPath) -> str | None:
    """The unescaped text at ``path`` in ``segment`` (``None`` when absent or empty). python-hl7
    gives Field -> Repetition -> Component -> sub-component strings, or a Field of plain strings
    when the field has no component separator."""
    if segment is None or len(segment) <= path.field:
        return None
    fld = segment[path.field]
    if path.segment == "MSH" and path.field <= 2:
        return str(fld)
    items = list(fld) if isinstance(fld, list) else [fld]
    reps: list[Any] = items if items and isinstance(items[0], hl7.Repetition) else [fld]
    if path.repetition is None or path.repetition.isdigit():
        idx = int(path.repetition or 1) - 1
        node = reps[idx] if 0 <= idx < len(reps) else None
    else:
        node = next((r for r in reps if isinstance(r, hl7.Repetition) and len(r) >= 5
                     and str(r[4]) == path.repetition), None)
    if node is None or path.component is None:
        return _text(msg, node)
    if not isinstance(node, hl7.Repetition):  # no components: component 1 is the whole value
        return _text(msg, node) if path.component == 1 and path.subcomponent in (None, 1) else None
    if len(node) < path.component:
        return None
    comp = node[path.component - 1]
    if path.subcomponent is None:
        return _text(msg, comp)
    subs = list(comp) if isinstance(comp, list) else [comp]
    return _text(msg, subs[path.subcomponent - 1]) if len(subs) >= path.subcomponent else None


#: Segments every result message keeps, to the field given: MSH to MSH-10 (the message control id,
#: the row locator), and PID, OBR, OBX at least present (a message without them is a row issue).
_ALWAYS = {"MSH": 10, "PID": 1, "OBR": 1, "OBX": 1}


def needed_fields(paths: Iterable[FieldPath]) -> dict[str, int]:
    """Segment id -> the highest field number the mapping's columns read from it (see :func:`prune`)."""
    keep = dict(_ALWAYS)
    for p in paths:
        keep[p.segment] = max(keep.get(p.segment, 0), p.field)
    return keep


def prune(message: str, keep: dict[str, int]) -> str:
    """The message with each segment cut after the last field read from it: a segment not in
    ``keep`` is reduced to its id, so segment positions (the row locator) stay those of the file.

    A speed-up, not a parser: python-hl7 still parses what is kept, and builds ~100 objects per
    segment (every field, repetition and component). Cutting at a field separator is exact, because
    a separator inside a value is always escaped (``\\F\\``, HL7 v2.5.1 §2.7), and fields past the cut
    are never read. Unread fields also never enter memory as parsed text (e.g. PID-5, the patient's
    name, when no column reads it). MSH keeps one field more, as its MSH-1 is the separator itself.
    """
    sep = message[3:4] or "|"
    out = []
    for seg in message.split("\r"):
        if not seg.strip():
            continue
        last = keep.get(seg[:3])
        if last is None:
            out.append(seg[:3])
            continue
        out.append(sep.join(seg.split(sep, last + 2)[:last + 1]))
    return "\r".join(out)


@register
class HL7v2Reader(Reader):
    """HL7 v2.x messages (ORU^R01 and alike): one row per OBX segment."""

    format_name = "hl7v2"

    def sheets(self) -> list[str | None]:
        return [None]

    def rows(self, sheet: str | None, required_columns: set[str]) -> Iterator[Row]:
        paths: dict[str, FieldPath] = {}
        for col in sorted(required_columns):
            try:
                paths[col] = FieldPath.parse(col)
            except ValueError as exc:
                raise ReaderError(f"{self.display_name}: column {exc}") from None
        encoding = getattr(self.options, "encoding", None) or "utf-8"
        messages = self._messages()
        keep = needed_fields(paths.values())
        for n, raw in enumerate(messages, start=1):
            yield from self._message_rows(n, raw, encoding, paths, keep)

    def columns(self) -> list[str]:
        """Every field path the file's messages fill, in segment-then-field order (``MSH-3``,
        ``PID-3``, ``OBX-5``...), plus ``PID-3[<type>].1`` for each identifier type code (CX.5) seen,
        for ``adapter scan``. A message python-hl7 cannot parse is passed over here (ingestion
        reports it as a row issue). Raises ReaderError when the file is missing or has no message."""
        encoding = getattr(self.options, "encoding", None) or "utf-8"
        messages = self._messages()
        filled: dict[str, set[int]] = {}
        id_types: set[str] = set()
        for raw in messages:
            try:
                msg = hl7.parse(raw.decode(encoding, errors="replace"))
            except Exception:  # noqa: BLE001, S112  (python-hl7 raises several types; see rows())
                continue
            for seg in msg:
                if not len(seg):
                    continue
                sid = str(seg[0])
                for f in range(1, len(seg)):
                    if str(seg[f]).strip():
                        filled.setdefault(sid, set()).add(f)
                if sid == "PID" and len(seg) > 3 and isinstance(seg[3], list):
                    for rep in seg[3]:
                        if isinstance(rep, hl7.Repetition) and len(rep) >= 5 and str(rep[4]).strip():
                            id_types.add(str(rep[4]).strip())
        order = {"MSH": 0, "PID": 1, "OBR": 2, "OBX": 3}
        cols = []
        for sid in sorted(filled, key=lambda s: (order.get(s, 9), s)):
            for f in sorted(filled[sid]):
                if sid == "MSH" and f <= 2:
                    continue  # the separator and encoding characters
                cols.append(f"{sid}-{f}")
                if sid == "PID" and f == 3:
                    cols += [f"PID-3[{t}].1" for t in sorted(id_types) if re.match(r"^[A-Za-z0-9_-]+$", t)]
        return cols

    def _messages(self) -> list[bytes]:
        """The file's (or the in-memory ``data``'s) messages. Raises ReaderError when the file is
        missing or holds no MSH segment."""
        if self.data is None and not self.path.is_file():
            raise ReaderError(f"{self.display_name}: no such file")
        messages = split_messages(self.data if self.data is not None else self.path.read_bytes())
        if not messages:
            raise ReaderError(f"{self.display_name}: no HL7 v2 message (no MSH segment) in the file")
        return messages

    def _message_rows(self, n: int, raw: bytes, encoding: str, paths: dict[str, FieldPath],
                      keep: dict[str, int]) -> Iterator[Row]:
        try:
            msg = hl7.parse(prune(raw.decode(encoding), keep))
        except UnicodeDecodeError as exc:
            yield self._problem(n, f"message {n} is not valid {encoding} ({exc.reason}); check reader.encoding")
            return
        except Exception as exc:  # noqa: BLE001  (python-hl7 raises several types for malformed input)
            yield self._problem(n, f"message {n} cannot be parsed as HL7 v2 ({exc.__class__.__name__}: {str(exc)[:80]})")
            return
        before = self.stats.rows
        try:
            rows = list(self._result_rows(n, msg, paths))
        except Exception as exc:  # noqa: BLE001  (a message python-hl7 parsed but that is broken inside)
            self.stats.rows = before
            yield self._problem(n, f"message {n} is malformed ({exc.__class__.__name__}: {str(exc)[:80]})")
            return
        yield from rows

    def _result_rows(self, n: int, msg: hl7.Message, paths: dict[str, FieldPath]) -> Iterator[Row]:
        control = _text(msg, msg.segment("MSH")[10]) if len(msg.segment("MSH")) > 10 else None
        where = f"MSH-10 {control}" if control else "no MSH-10"
        first: dict[str, hl7.Segment] = {}
        for seg in msg:
            if len(seg):
                first.setdefault(str(seg[0]), seg)
        missing = [s for s in ("PID", "OBR", "OBX") if s not in first]
        if missing:
            yield self._problem(n, f"message {n} ({where}) has no {'/'.join(missing)} segment: truncated or not a result message")
            return
        obr: hl7.Segment | None = None
        k = 0
        for pos, seg in enumerate(msg, start=1):
            sid = str(seg[0]) if len(seg) else ""
            if sid == "OBR":
                obr = seg
            if sid != "OBX":
                continue
            k += 1
            cells: dict[str, Any] = {}
            for col, p in paths.items():
                owner = seg if p.segment == "OBX" else obr if p.segment == "OBR" else first.get(p.segment)
                cells[col] = field_value(msg, owner, p)
            self.stats.rows += 1
            yield Row(self.display_name, None, n, cells, None, f"OBX {k} (segment {pos}), {where}")

    def _problem(self, n: int, reason: str) -> Row:
        self.stats.rows += 1
        return Row(self.display_name, None, n, {}, reason, f"message {n}")
