"""Property tests (hypothesis): arbitrary strings in any mapped column give valid resources or
row-level issues, never an unhandled exception."""

from __future__ import annotations

from datetime import datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapter.config import ROOT
from adapter.mapping.engine import map_row
from adapter.readers.base import Row
from adapter.spec import load_mapping
from adapter.validation import get_validator

MAPPINGS = [load_mapping(s, m, ROOT / "mappings") for s, m in
            [("hito", "erm_citometria"), ("hito", "seguimiento"), ("huanl", "curso_corto")]]
SHEETS = [(m, sh) for m in MAPPINGS for sh in m.sheets]
cell = st.one_of(st.none(), st.text(max_size=40), st.sampled_from(["<0,01", "0,01%", "24.56%", "+380", "7 months",
                                                                   "3a", "31/02/2019", "08/04/2019", "Sí", "No", "0"]),
                 st.integers(-5, 100), st.floats(allow_nan=True), st.datetimes(min_value=datetime(1900, 1, 1)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_cells_give_resources_or_issues(data: st.DataObject) -> None:
    mapping, sheet = data.draw(st.sampled_from(SHEETS))
    cells = {c: data.draw(cell) for c in sorted(sheet.columns)}
    row = Row("fuzz.csv", sheet.sheet, 2, cells)
    result = map_row(row, sheet, mapping.ctx, mapping.site_context("k"))
    if result.ok:
        for r in result.resources:
            # R4 schema + profile on every resource; models once per shape
            issues = get_validator().validate(r)
            assert all(i.validator != "r4b-model" for i in issues), issues
    else:
        assert result.resources == []
        for issue in result.issues:
            assert issue.row == 2 and issue.file == "fuzz.csv" and issue.reason


_DATE_TEXT = st.text(alphabet="0123456789/-. ", max_size=12)


@settings(max_examples=2000, deadline=None)
@given(text=_DATE_TEXT, fmt=st.sampled_from(["%d/%m/%Y", "%Y-%m-%d", "%d-%m-%Y", "%d.%m.%Y", "%m/%d/%Y"]))
def test_fast_date_path_accepts_exactly_what_strptime_accepts(text: str, fmt: str) -> None:
    from adapter.mapping.transforms import _parse_date

    try:
        expected = datetime.strptime(text, fmt).date()
    except ValueError:
        expected = None
    try:
        got = _parse_date(text, fmt)
    except ValueError:
        got = None
    assert got == expected
