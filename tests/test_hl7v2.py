"""HL7 v2 reader (python-hl7) on the example lab feeds and on the edge cases a feed really has:
escaped delimiters, two OBX in one message, MLLP framing, and a truncated message."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest

from adapter.errors import ReaderError, RowIssue
from adapter.mapping.transforms import MRDValue, TransformError, mrd_scientific
from adapter.readers import reader_for
from adapter.readers.hl7v2 import FieldPath

ROOT = Path(__file__).resolve().parent.parent
UK = ROOT / "examples" / "uk_infants" / "uk_mrd_lab_ORU_R01.hl7"
CDMX_B = ROOT / "examples" / "mx_multicentro" / "CDMX-B" / "ERM_CDMX-B_ORU_R01.hl7"
COLS = {"MSH-10", "PID-3[MR].1", "PID-3[NH].1", "PID-7", "PID-8", "OBR-13", "OBR-15.1.2", "OBX-2", "OBX-5",
        "OBX-6.1", "OBX-8", "OBX-11", "OBX-14"}

MSH = "MSH|^~\\&|LIS|LAB|ADAPTER|NET|202001011200||ORU^R01^ORU_R01|{ctl}|P|2.5.1|||AL|NE||UNICODE UTF-8"
PID = "PID|1||X123^^^SITE^MR||DOE^JANE||20180101|F"
OBR = "OBR|1|ORD1|LAB1|MRD^MRD^L|||202001011000||||||Post cycle 1||MAR&Bone marrow&HL70070"


def _rows(path: Path, cols: set[str] = COLS) -> list:
    return list(reader_for("hl7v2")(path, SimpleNamespace(encoding=None)).rows(None, cols))


def _file(tmp_path: Path, *messages: str, sep: str = "\r", between: str = "") -> Path:
    p = tmp_path / "feed.hl7"
    p.write_bytes(between.join("".join(seg + sep for seg in m) for m in messages).encode())
    return p


def test_uk_reference_lab_feed() -> None:
    rows = _rows(UK)
    assert len(rows) == 24 and [r.row for r in rows] == list(range(1, 25))
    first = rows[0]
    assert first.segment == "OBX 1 (segment 4), MSH-10 MRD161127001"
    # PID-3 repeats: the NHS number and the hospital number are picked by identifier type
    assert first.cells["PID-3[NH].1"] == "9996706362" and first.cells["PID-3[MR].1"] == "ENG8971488"
    assert first.cells["OBX-5"] == "2 x 10-3" and first.cells["OBX-8"] == "A" and first.cells["OBX-2"] == "ST"
    assert first.cells["OBR-15.1.2"] == "Bone marrow"  # a sub-component
    # the last result of each infant is the MRD before HSCT: 9 negative, 1 at 5 x 10-4, 1 not quantifiable
    last = {r.cells["PID-3[MR].1"]: r.cells["OBX-5"] for r in sorted(rows, key=lambda r: r.cells["OBX-14"])}
    assert Counter(last.values()) == {"<1 x 10-4": 9, "5 x 10-4": 1, "positive not quantifiable": 1}
    assert {r.cells["OBR-13"] for r in rows} == {"Pre-blinatumomab", "End of blinatumomab cycle 1",
                                                "End of blinatumomab cycle 2 (pre-HSCT)"}
    # 11 infants, each with one hospital number
    assert len({r.cells["PID-3[MR].1"] for r in rows}) == 11


def test_cdmx_b_feed_keeps_leading_zeros_and_accents() -> None:
    rows = _rows(CDMX_B)
    assert len(rows) == 34
    assert all(len(r.cells["PID-3[MR].1"]) == 8 for r in rows) and rows[0].cells["PID-3[MR].1"].startswith("00")
    assert rows[0].cells["OBR-15.1.2"] == "Médula ósea"
    assert Counter(r.cells["OBX-2"] for r in rows).keys() == {"NM", "ST"}
    assert {r.cells["OBX-6.1"] for r in rows} == {"%"}
    assert len({r.cells["PID-3[MR].1"] for r in rows}) == 14
    assert rows[0].cells["PID-3[NH].1"] is None  # no NHS number in Mexico: absent, not an error


def test_escaped_delimiters_are_unescaped(tmp_path: Path) -> None:
    obx = "OBX|1|ST|MRD^MRD^L||pos \\F\\ low \\S\\ <1 x 10-4 \\T\\ \\E\\ ok|||A|||F"
    rows = _rows(_file(tmp_path, [MSH.format(ctl="C1"), PID, OBR, obx]))
    assert rows[0].cells["OBX-5"] == "pos | low ^ <1 x 10-4 & \\ ok"


def test_two_obx_in_one_message_are_two_rows(tmp_path: Path) -> None:
    msg = [MSH.format(ctl="C2"), PID, OBR, "OBX|1|NM|MRD^MRD^L||0.5|%||H|||F", "OBX|2|ST|MRD^MRD^L||<0.01|%||N|||F"]
    rows = _rows(_file(tmp_path, msg))
    assert [(r.row, r.segment, r.cells["OBX-5"]) for r in rows] == [
        (1, "OBX 1 (segment 4), MSH-10 C2", "0.5"), (1, "OBX 2 (segment 5), MSH-10 C2", "<0.01")]
    assert {r.cells["OBR-13"] for r in rows} == {"Post cycle 1"} and {r.cells["PID-3[MR].1"] for r in rows} == {"X123"}


@pytest.mark.parametrize(("sep", "between"), [("\r", ""), ("\r\n", "\r\n"), ("\n", "\n"), ("\r", "\x1c\r\x0b")])
def test_segment_and_message_separators(tmp_path: Path, sep: str, between: str) -> None:
    msgs = [[MSH.format(ctl=f"M{i}"), PID, OBR, f"OBX|1|NM|MRD^MRD^L||{i}|%||H|||F"] for i in range(3)]
    rows = _rows(_file(tmp_path, *msgs, sep=sep, between=between))
    assert [(r.row, r.cells["MSH-10"], r.cells["OBX-5"]) for r in rows] == [(1, "M0", "0"), (2, "M1", "1"), (3, "M2", "2")]


def test_truncated_message_is_a_row_issue_and_the_rest_is_read(tmp_path: Path) -> None:
    good = [MSH.format(ctl="G1"), PID, OBR, "OBX|1|NM|MRD^MRD^L||0.5|%||H|||F"]
    truncated = [MSH.format(ctl="T1"), "PID|1||X9^^^SITE^MR"]  # cut off after PID
    rows = _rows(_file(tmp_path, good, truncated, [MSH.format(ctl="G2"), *good[1:]]))
    assert [r.row for r in rows] == [1, 2, 3]
    bad = rows[1]
    assert bad.problem is not None and "MSH-10 T1" in bad.problem and "no OBR/OBX" in bad.problem
    issue = RowIssue(bad.file, bad.sheet, bad.row, None, None, bad.problem, code="structure", segment=bad.segment)
    text = issue.to_operation_outcome_issue()["diagnostics"]
    assert "file=feed.hl7" in text and "message=2" in text and "truncated" in text
    # an OBX cut short has its later fields absent (blank), which the mapping reports as missing values
    short = _rows(_file(tmp_path, [MSH.format(ctl="S1"), PID, OBR, "OBX|1|NM|MRD^MRD^L"]))
    assert short[0].problem is None and short[0].cells["OBX-5"] is None


@pytest.mark.parametrize("path", ["OBX5", "obx-5", "OBX-0", "PID-3[MR].0", "PID-3.1.1.1", "OBX-5 ; DROP"])
def test_bad_column_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match="not an HL7 v2 field path"):
        FieldPath.parse(path)
    with pytest.raises(ReaderError, match="not an HL7 v2 field path"):
        _rows(UK, {path})


def test_a_file_without_messages_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "empty.hl7"
    p.write_text("this is not HL7\r")
    with pytest.raises(ReaderError, match="no HL7 v2 message"):
        _rows(p)


@pytest.mark.parametrize(("text", "percent", "comparator"), [
    ("2 x 10-3", "0.2", None), ("<1 x 10-4", "0.01", "<"), ("5 × 10⁻⁴", "0.05", None), ("1x10^-4", "0.01", None),
    ("1E-4", "0.01", None), ("1 x 10-1", "10", None), ("≤1 x 10-5", "0.001", "<="), ("1,5 x 10-3", "0.15", None)])
def test_rq_pcr_levels(text: str, percent: str, comparator: str | None) -> None:
    assert mrd_scientific(text, ctx=SimpleNamespace(decimal=".")) == MRDValue(Decimal(percent), comparator)


@pytest.mark.parametrize("text", ["positive", "2 x 10", "10-3", "5 x 10+2", ""])
def test_rq_pcr_text_that_is_not_a_level_is_an_error(text: str) -> None:
    with pytest.raises(TransformError):
        mrd_scientific(text, ctx=SimpleNamespace(decimal="."))


@pytest.mark.parametrize("text", ["positive not quantifiable", "Positive, not quantifiable", "PNQ", " positive  not quantifiable "])
def test_positive_not_quantifiable_is_positive_without_a_number(text: str) -> None:
    assert mrd_scientific(text, ctx=SimpleNamespace(decimal=".")) == MRDValue(None)


def test_not_quantifiable_texts_can_be_declared() -> None:
    ctx = SimpleNamespace(decimal=".")
    assert mrd_scientific("pos. < QR", ctx=ctx, not_quantifiable=["pos. < QR"]) == MRDValue(None)
    with pytest.raises(TransformError):
        mrd_scientific("positive not quantifiable", ctx=ctx, not_quantifiable=["pos. < QR"])


def test_every_uk_result_is_a_level_but_the_one_not_quantifiable() -> None:
    """seed 004: the MRD-positive relapsing patient had 0.05 % (5 x 10-4) before HSCT."""
    ctx = SimpleNamespace(decimal=".")
    values = [mrd_scientific(r.cells["OBX-5"], ctx=ctx) for r in _rows(UK)]
    levels = [v for v in values if v.quantified]
    assert values.count(MRDValue(None)) == 1 and len(levels) == 23
    assert MRDValue(Decimal("0.05")) in levels
    assert all(v.comparator == "<" and v.value == Decimal("0.01") for v in levels if v.comparator)
