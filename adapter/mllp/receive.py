"""One HL7 v2 message received over MLLP -> stored (or kept as a dead letter) -> its ACK.

:func:`receive` runs a message through the site's HL7 v2 mapping with exactly the reader, mapping,
validation and store that ``adapter ingest`` uses (:func:`adapter.ingest.ingest_file` on the
message's bytes), in one database transaction with its subscription events, and returns the ACK
only after that transaction has committed. A message is all or nothing (``strict``): one row
issue stores none of it.

- ``AA``: stored. A resend of a stored message (same MSH-10 and content) maps to the same resource
  ids and content, so it changes nothing (each resource reports ``unchanged``; no new version, no
  Provenance, no notification) and is acknowledged ``AA`` again.
- ``AE``: a row issue (a bad value, a missing required field): one ERR per issue naming segment,
  field and reason; the message is kept in the dead-letter table (adapter/store/dead_letters.py).
- ``AR``: the bytes are not an HL7 v2 message python-hl7 can parse, it is not a result message
  (MSH-9 not ``ORU``), or the mapping's ``reader.accept`` says it is for another site: kept as a
  dead letter too. The store being unavailable is also ``AR`` (ERR 207) but is not kept: the
  message was not processed, and the sender resends it.

Patient identifiers never leave this module in log text: :class:`Receipt` carries the MSH-10,
the ACK code, counts and ERR locations; the ERR reasons go only back to the sender (the site's own
system) and into the dead-letter table.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hl7

from adapter.config import Settings
from adapter.errors import AdapterError, IngestRejected, ReaderError, StoreError
from adapter.ingest import IngestReport, ingest_file
from adapter.mllp.ack import AckError, build_ack, error_from_issue, should_answer
from adapter.readers.hl7v2 import FieldPath, field_value
from adapter.spec import load_mapping
from adapter.spec.loader import LoadedMapping
from adapter.store import Store, dead_letters


@dataclass
class Receipt:
    """What became of one message: ``ack_code`` (AA/AE/AR), ``ack`` (the bytes to send, ``None``
    when MSH-15 asks for no answer), the message's ``control_id`` (MSH-10), ``errors`` (its ERR
    contents), the ``report`` of the ingestion when one ran, the ``dead_letter`` id when kept, and
    ``seconds`` from the call to the ACK being ready."""

    ack_code: str
    ack: bytes | None
    control_id: str | None
    errors: list[AckError] = field(default_factory=list)
    report: IngestReport | None = None
    dead_letter: str | None = None
    seconds: float = 0.0

    def log_fields(self) -> dict[str, Any]:
        """Fields for a log line: no patient identifier, no value from the message but MSH-10."""
        out: dict[str, Any] = {"ack": self.ack_code, "control_id": self.control_id,
                               "ms": round(self.seconds * 1000, 1)}
        if self.report is not None:
            out.update(results=self.report.rows_read, changed=sum(o.outcome != "unchanged" for o in self.report.outcomes))
        if self.errors:
            out["errors"] = [f"{e.location} ({e.code})" for e in self.errors]
        if self.dead_letter:
            out["dead_letter"] = self.dead_letter
        return out


def _first(msg: hl7.Message, seg: str) -> hl7.Segment | None:
    return next((s for s in msg if len(s) and str(s[0]) == seg), None)


def _control_id(msg: hl7.Message) -> str | None:
    msh = _first(msg, "MSH")
    return field_value(msg, msh, FieldPath.parse("MSH-10")) if msh is not None else None


def receive(raw: bytes, site: str, mapping: str, store: Store, *, settings: Settings,
            validator: Any = None, replay_of: str | None = None, loaded: LoadedMapping | None = None) -> Receipt:
    """Store one message (the bytes between the MLLP start block and end block) for ``site`` with
    its HL7 v2 ``mapping``, and build its ACK (see the module docstring for the codes). Never
    raises for a bad message; ``replay_of`` (a dead-letter id) keeps no second dead letter when the
    replay fails again. Raises ConfigError / MappingSpecError only for a bad site or mapping (a
    start-up error of the listener, checked before it accepts connections). ``loaded``: the
    mapping loaded once by the caller (else it is loaded from ``settings.mappings_dir`` here)."""
    started = time.perf_counter()
    loaded = loaded or load_mapping(site, mapping, settings.mappings_dir)
    encoding = loaded.spec.reader.encoding or "utf-8"
    ack_id = uuid.uuid4().hex[:20]
    msg: hl7.Message | None = None
    control: str | None = None

    def done(code: str, errors: list[AckError], report: IngestReport | None = None, keep: bool = True) -> Receipt:
        letter = None
        if code != "AA" and keep and replay_of is None:
            try:
                letter = dead_letters.keep(store, site, mapping, control, code, [e.as_dict() for e in errors], raw)
            except StoreError:
                code, errors = "AR", [*errors, AckError(None, None, None, None, 207, "the message could not be kept; resend it")]
        answer = msg is None or should_answer(field_value(msg, _first(msg, "MSH"), FieldPath.parse("MSH-15")), code)
        ack = build_ack(msg, code, errors, ack_id) if answer else None
        return Receipt(code, ack, control, errors, report, letter, time.perf_counter() - started)

    try:
        text = raw.decode(encoding)
        # the header, and the first segment of each id the mapping's accept paths read: what the
        # ACK and the site check need (the reader parses the message itself, pruned to its columns)
        wanted = {"MSH"} | {p.split("-", 1)[0] for p in (loaded.spec.reader.accept or {})}
        segments = [seg for seg in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if seg.strip()]
        header = [seg for i, seg in enumerate(segments) if seg[:3] in wanted
                  and all(other[:3] != seg[:3] for other in segments[:i])]
        msg = hl7.parse("\r".join(header if segments and segments[0].startswith("MSH") else segments))
        if not len(msg) or str(msg[0][0]) != "MSH":
            raise ValueError("the message does not start with an MSH segment")
        control = _control_id(msg)
    except UnicodeDecodeError as exc:
        msg = None
        return done("AR", [AckError(None, None, None, None, 102, f"the message is not valid {encoding} ({exc.reason})")])
    except Exception as exc:  # noqa: BLE001  (python-hl7 raises several types for malformed input)
        msg = None
        return done("AR", [AckError(None, None, None, None, 100,
                                    f"not an HL7 v2 message ({exc.__class__.__name__}: {str(exc)[:120]})")])
    msh = _first(msg, "MSH")
    kind = field_value(msg, msh, FieldPath.parse("MSH-9.1"))
    if kind != "ORU":
        return done("AR", [AckError("MSH", 1, 9, 1, 200, f"message type {kind or '(none)'} is not handled here: "
                                                          "this listener stores results (ORU^R01)")])
    for path, allowed in (loaded.spec.reader.accept or {}).items():
        fp = FieldPath.parse(path)
        value = field_value(msg, _first(msg, fp.segment), fp)
        if value not in allowed:
            return done("AR", [AckError(fp.segment, 1, fp.field, fp.component, 103,
                                        f"{path} is {value or '(empty)'}: this listener stores the messages of site "
                                        f"{site} only ({path} one of {', '.join(allowed)})")])
    name = f"MLLP message {control or '(no MSH-10)'}"
    try:
        report = ingest_file(Path(f"mllp-{ack_id}.hl7"), site, mapping, store, settings=settings, validator=validator,
                             strict=True, display_name=name, data=raw, loaded=loaded)
    except IngestRejected as exc:
        report = exc.report  # type: ignore[attr-defined]
        errors = [error_from_issue(i.column, i.segment, i.code, i.reason, i.value) for i in report.issues if i.severity == "error"]
        return done("AE", errors, report)
    except ReaderError as exc:
        return done("AR", [AckError(None, None, None, None, 100, str(exc))])
    except StoreError as exc:
        return done("AR", [AckError(None, None, None, None, 207, f"the store is unavailable ({exc.__class__.__name__}); "
                                                                 "resend the message later")], keep=False)
    except AdapterError as exc:
        return done("AR", [AckError(None, None, None, None, 207, str(exc)[:200])], keep=False)
    return done("AA", [], report)
