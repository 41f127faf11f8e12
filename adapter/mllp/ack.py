"""HL7 v2 acknowledgments for messages received over MLLP (pure functions, no I/O).

Rules, from HL7 v2.5.1 chapter 2 (Control):

- §2.9.2 "original mode": the receiver answers each message with an ``ACK`` whose MSA-1 is ``AA``
  (accepted: here, stored), ``AE`` (an error in the content: the sender should not resend it
  unchanged) or ``AR`` (rejected: unparseable, not for this receiver, or the receiver could not
  process it now; a resend may succeed). MSA-2 is the message's MSH-10.
- §2.14.9 MSH: the ACK's MSH-3/4 (sending application/facility) are the message's MSH-5/6, its
  MSH-5/6 the message's MSH-3/4; MSH-9 ``ACK^<trigger>^ACK``; MSH-10 a new control id; MSH-11/12
  copied. python-hl7's :meth:`hl7.Message.create_ack` builds exactly this.
- §2.15.5 ERR: one segment per error: ERR-2 error location (ERL: segment id ^ sequence ^ field
  ^ repetition ^ component ^ sub-component), ERR-3 HL7 error code (table 0357: 100 segment sequence
  error, 101 required field missing, 102 data type error, 103 table value not found, 200
  unsupported message type, 207 application internal error), ERR-4 severity (``E``), ERR-8 the
  user message.
- §2.9.3 / MSH-15 (accept acknowledgment type, table 0155): ``AL`` (or empty) always answer,
  ``NE`` never, ``ER`` only on an error (AE/AR), ``SU`` only on success (AA); the same reading as
  Mirth Connect's "use MSH-15 for ACK". The ACK itself asks for no acknowledgment (MSH-15/16 empty).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

import hl7

#: HL7 table 0357 (message error condition codes) used here, with their names
ERROR_CODES = {100: "Segment sequence error", 101: "Required field missing", 102: "Data type error",
               103: "Table value not found", 200: "Unsupported message type", 207: "Application internal error"}

#: RowIssue codes (FHIR IssueType) -> table 0357
_BY_ISSUE = {"required": 101, "value": 102, "code-invalid": 103, "structure": 100, "invariant": 102,
             "duplicate": 102, "not-supported": 200}


@dataclass(frozen=True)
class AckError:
    """One error reported in an ERR segment: ``segment`` id and 1-based ``sequence`` (the OBX's
    number in the message), ``field`` / ``component`` positions (``None`` when unknown), the table
    0357 ``code`` and the ``reason`` text. :meth:`as_dict` is what the dead-letter table keeps."""

    segment: str | None
    sequence: int | None
    field: int | None
    component: int | None
    code: int
    reason: str

    @property
    def location(self) -> str:
        """``OBX[1]-5.1`` style, for people (the ERR segment carries it as ERL components)."""
        if not self.segment:
            return "message"
        out = f"{self.segment}[{self.sequence or 1}]"
        if self.field:
            out += f"-{self.field}" + (f".{self.component}" if self.component else "")
        return out

    def as_dict(self) -> dict[str, object]:
        return {"location": self.location, "code": self.code, "reason": self.reason}


_SEQ = re.compile(r"^([A-Z][A-Z0-9]{2}) (\d+) ")
_COLUMN = re.compile(r"^([A-Z][A-Z0-9]{2})-(\d{1,3})(?:\[[^\]]*\])?(?:\.(\d{1,3}))?")


def error_from_issue(column: str | None, segment: str | None, code: str, reason: str, value: object = None) -> AckError:
    """The ERR content for one row issue of the HL7 v2 reader: ``column`` is the mapping's field
    path (``OBX-5``, ``PID-3[MR].1``; ``None`` for a whole-row issue), ``segment`` the reader's
    locator (``"OBX 2 (segment 5), MSH-10 X"``), ``code`` the FHIR IssueType code, ``value`` the
    field's text, quoted in the reason unless it comes from PID (ACKs end up in engines' logs;
    identifiers stay out of them)."""
    seg = seq = fld = comp = None
    m = _COLUMN.match(column or "")
    if m:
        seg, fld, comp = m[1], int(m[2]), int(m[3]) if m[3] else None
        found = _SEQ.match(segment or "")
        seq = int(found[2]) if found and found[1] == seg else 1
    else:
        found = _SEQ.match(segment or "")
        if found:
            seg, seq = found[1], int(found[2])
    if value not in (None, "") and seg != "PID":
        reason = f"{reason} (value {str(value)[:80]!r})"
    return AckError(seg, seq, fld, comp, _BY_ISSUE.get(code, 207), reason)


def should_answer(accept_ack_type: str | None, ack_code: str) -> bool:
    """Whether MSH-15 (table 0155) asks for an answer with this MSA-1 code (see module docstring)."""
    kind = (accept_ack_type or "").strip().upper()
    if kind == "NE":
        return False
    if kind == "ER":
        return ack_code != "AA"
    if kind == "SU":
        return ack_code == "AA"
    return True


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S")


def _err_segments(message: hl7.Message | None, errors: list[AckError], sep: str = "|", comp: str = "^") -> list[str]:
    out = []
    for e in errors:
        text = e.reason[:400]
        if message is not None:
            text = message.escape(text)
        else:  # escape the separators by hand (§2.7.4), as python-hl7 would
            text = (text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
                    .replace("&", "\\T\\").replace("~", "\\R\\"))
        text = text.replace("\r", " ").replace("\n", " ")
        erl = comp.join("" if v is None else str(v) for v in (e.segment, e.sequence, e.field, None, e.component))
        code = comp.join((str(e.code), ERROR_CODES.get(e.code, ""), "HL70357"))
        out.append(sep.join(("ERR", "", erl.rstrip(comp), code, "E", "", "", "", text)))
    return out


def build_ack(message: hl7.Message | None, ack_code: str, errors: list[AckError], control_id: str) -> bytes:
    """The ACK for ``message`` (python-hl7's parse of it; ``None`` when it could not be parsed),
    with MSA-1 ``ack_code`` and one ERR per error, encoded UTF-8 with ``\\r`` segment terminators
    (no MLLP framing). ``control_id`` is the ACK's own MSH-10."""
    if message is not None:
        ack = message.create_ack(ack_code, message_id=control_id)
        msh = str(ack.segment("MSH"))
        sep, comp = message.separators[1], message.separators[3]  # "\r|~^&": segment, field, repetition, component
        segs = [msh, str(ack.segment("MSA")), *_err_segments(message, errors, sep, comp)]
    else:  # nothing to copy: our own header, MSA-2 empty (the sender's MSH-10 is unknown)
        segs = [f"MSH|^~\\&|PEDALL_ADAPTER||||{_stamp()}||ACK^^ACK|{control_id}|P|2.5.1", f"MSA|{ack_code}|",
                *_err_segments(None, errors)]
    return ("\r".join(segs) + "\r").encode("utf-8")
