"""The open model (issue 18): every example site's clinical content carried in standard FHIR
elements, order-independent, on a real server and client, SQLite and PostgreSQL."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import openpyxl
import pytest

from adapter.config import Settings
from tests.conftest import ALL_EXAMPLE_FILES, EXAMPLES, _store_on, posted
from tests.server import Server, _post_export

SITES = sorted({site for site, _, _ in ALL_EXAMPLE_FILES})


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def network(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Iterator[Server]:
    """Every example export posted as `make run` ingests them."""
    with posted(request.param, tmp_path_factory.mktemp("open"), settings, ALL_EXAMPLE_FILES) as srv:
        yield srv


def _all(srv: Server, rtype: str, **params: Any) -> list[dict[str, Any]]:
    out, url = [], f"/{rtype}"
    query: dict[str, Any] | None = {"_count": "1000", **params}
    while url:
        bundle = srv.client.get(url, params=query).json()
        out += [e["resource"] for e in bundle.get("entry", [])]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), "")
        query = None
    return out


def _dead(patient: dict[str, Any]) -> bool:
    return patient.get("deceasedBoolean") is True or "deceasedDateTime" in patient


def test_every_death_is_on_the_patient_and_the_facade_counts_them(network: Server) -> None:
    """A generic FHIR reader counts the deaths from Patient.deceased[x] alone; the facade agrees,
    site by site (cdmx-b's deaths come from its event CSV, its Patients from its lab feed)."""
    report = network.client.get("/outcomes", params={"suppress": "false"}).json()
    deaths_on_patients: dict[str, int] = {}
    for site in SITES:
        patients = _all(network, "Patient", _site=site)
        treated = {r["subject"]["reference"].split("/")[1] for r in _all(network, "MedicationAdministration", _site=site)}
        deaths_on_patients[site] = sum(_dead(p) for p in patients if p["id"] in treated)
    facade = {site: report["sites"][site]["deaths"]["count"] for site in SITES}
    assert deaths_on_patients == facade
    assert facade["cdmx-b"] > 0 and sum(facade.values()) == report["pooled"]["deaths"]["count"]
    # every death AdverseEvent's patient is dead on the Patient
    for ae in _all(network, "AdverseEvent"):
        if any(c.get("code") == "death" for c in ae["event"].get("coding", [])):
            pid = ae["subject"]["reference"].split("/")[1]
            assert _dead(network.client.get(f"/Patient/{pid}").json()), pid


def test_a_death_without_a_date_is_counted_and_left_out_of_survival_with_its_reason(network: Server) -> None:
    wb = openpyxl.load_workbook(EXAMPLES / "hito" / "hito_seguimiento_blinatumomab.xlsx")
    ws = wb["Pacientes"]
    header = [c.value for c in ws[1]]
    state, when = header.index("Estado vital") + 1, header.index("Fecha de defunción") + 1
    row = next(r for r in range(2, ws.max_row + 1) if ws.cell(r, state).value in ("Vivo", "Viva"))
    pid_value = ws.cell(row, 1).value
    ws.cell(row, state).value = "Finado"  # dead, and the workbook has no date for it
    assert ws.cell(row, when).value is None
    buf = io.BytesIO()
    wb.save(buf)
    before = network.client.get("/outcomes", params={"site": "hito", "suppress": "false"}).json()["sites"]["hito"]
    r = network.client.post("/$ingest", files={"file": ("hito_seguimiento_dateless.xlsx", buf.getvalue())},
                            data={"site": "hito", "mapping": "seguimiento"})
    assert r.status_code == 200, r.text[:300]
    try:
        patient = _all(network, "Patient", identifier=f"https://w3id.org/pedall-fhir/sid/hito/patient|{pid_value}")[0]
        assert patient.get("deceasedBoolean") is True and "deceasedDateTime" not in patient
        after = network.client.get("/outcomes", params={"site": "hito", "suppress": "false"}).json()["sites"]["hito"]
        assert after["deaths"]["count"] == before["deaths"]["count"] + 1
        assert after["deaths"]["date_not_known"] == 1
        os_ = after["survival"]["os"]
        assert os_["n"] == before["survival"]["os"]["n"] - 1
        assert os_["excluded"] == {"dead, date of death not known": 1}
        assert after["n"] == before["n"]  # still in every other figure
    finally:  # the original workbook again: the patient is stated alive ("Vivo"), which wins
        r = _post_export(network.client, EXAMPLES / "hito" / "hito_seguimiento_blinatumomab.xlsx", "hito", "seguimiento")
        assert r.status_code == 200
    restored = network.client.get("/outcomes", params={"site": "hito", "suppress": "false"}).json()["sites"]["hito"]
    assert restored["deaths"] == before["deaths"]


def test_grades_are_readable_from_standard_elements(network: Server) -> None:
    """A generic reader finds CRS grade >= 3 as AdverseEvent.severity = severe (no project
    extension needed) and gets the facade's count, site by site."""
    report = network.client.get("/outcomes", params={"suppress": "false"}).json()
    grade_url = "https://w3id.org/pedall-fhir/StructureDefinition/ae-grade"
    for site in SITES:
        severe_crs: set[str] = set()
        for ae in _all(network, "AdverseEvent", _site=site):
            grade = next((e["valueInteger"] for e in ae.get("extension", []) if e["url"] == grade_url), None)
            severity = (ae.get("severity") or {}).get("coding", [{}])[0].get("code")
            assert severity == {None: None, 0: None, 1: "mild", 2: "moderate"}.get(grade, "severe"), (grade, severity)
            if severity == "severe" and any(c.get("code") == "10052015" for c in ae["event"]["coding"]):
                severe_crs.add(ae["subject"]["reference"])
        assert len(severe_crs) == report["sites"][site]["toxicity"]["crs_grade_3_plus"]["count"], site


def test_a_site_local_adverse_event_term_counts_by_its_text() -> None:
    from adapter.outcomes.cohort import course_of

    pat = {"resourceType": "Patient", "id": "p1", "managingOrganization": {"reference": "Organization/x"}}
    fever = {"resourceType": "AdverseEvent", "id": "a1", "subject": {"reference": "Patient/p1"}, "date": "2020-01-02",
             "event": {"coding": [{"system": "https://w3id.org/pedall-fhir/sid/x/ae", "code": "FIEBRE"}], "text": "Fever"},
             "extension": [{"url": "https://w3id.org/pedall-fhir/StructureDefinition/ae-grade", "valueInteger": 1}]}
    meddra = {**fever, "id": "a2", "event": {"coding": [{"system": "https://www.meddra.org", "code": "10000001",
                                                          "display": "a MedDRA-coded term"}]}}
    course = course_of(pat, {"AdverseEvent": [fever, meddra]})
    assert sorted(course.adverse_events) == [("fever", 1), ("meddra:10000001", 1)]


# --------------------------------------------------------------------- identifying columns, nulls


def test_the_ctcae_table_is_ncis_term_list_and_any_site_may_use_it(tmp_path: Any) -> None:
    """mappings/codes/ctcae_v5.yaml is what its generator writes from NCI's CTCAE v5.0 spreadsheet
    (837 terms, the MedDRA codes REFERENCE.md §4 confirms); the shared ae_term table falls back to
    it, so any site's CTCAE term maps with its MedDRA code; a value in neither is an error naming
    both tables; a table whose ``then`` names no table is refused."""
    import importlib.util
    import shutil

    from adapter.config import ROOT
    from adapter.errors import MappingSpecError, TransformError
    from adapter.mapping.transforms import TransformContext, lookup
    from adapter.spec.loader import load_code_tables

    spec = importlib.util.spec_from_file_location("make_ctcae_v5", ROOT / "mappings/codes/source/make_ctcae_v5.py")
    assert spec is not None and spec.loader is not None
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    rows = make.terms()
    assert len(rows) == 837 and len({code for code, _, _ in rows}) == 837
    assert (ROOT / "mappings/codes/ctcae_v5.yaml").read_text(encoding="utf-8") == make.render(rows)
    codes = {term: code for code, _, term in rows}
    assert (codes["Cytokine release syndrome"], codes["Febrile neutropenia"], codes["Sepsis"]) == ("10052015", "10016288", "10040047")

    ctx = TransformContext(tables=load_code_tables("hito", ROOT / "mappings"))
    hypotension = lookup("HYPOTENSION ", ctx=ctx, table="ae_term")
    assert (hypotension.system, hypotension.code, hypotension.display) == ("https://www.meddra.org", "10021097", "Hypotension")
    crs = lookup("Cytokine release syndrome", ctx=ctx, table="ae_term")  # the project code, MedDRA beside it
    assert crs.code == "crs" and crs.extra["meddra"]["code"] == "10052015"
    with pytest.raises(TransformError, match="no entry in code table 'ae_term' nor 'ctcae_v5'"):
        lookup("Hypotensión leve", ctx=ctx, table="ae_term")

    mappings = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings" / "codes", mappings / "codes")
    (mappings / "codes" / "broken.yaml").write_text(
        "name: broken\ndescription: d\nsource: s\nsystem: http://x\nthen: ctcae_v4\nentries: {a: {code: a}}\n", encoding="utf-8")
    with pytest.raises(MappingSpecError, match="then.*'ctcae_v4', which does not exist"):
        load_code_tables("hito", mappings)


def test_a_mapping_that_reads_an_identifying_column_is_refused(tmp_path: Any, settings: Settings) -> None:
    """The issue's mistake: a name column routed into ``gender``. Refused when loaded (API 400,
    CLI exit 2), naming the key, and no name is read or printed."""
    import shutil

    from adapter.config import ROOT
    from adapter.errors import MappingSpecError
    from adapter.spec import load_mapping
    from tests.server import Server

    mdir = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mdir)
    mapping = mdir / "hito" / "seguimiento.yaml"
    text = mapping.read_text(encoding="utf-8")
    mistaken = text.replace("gender: {column: Sexo,", "gender: {column: Nombre,", 1)
    assert mistaken != text
    mapping.write_text(mistaken, encoding="utf-8")
    with pytest.raises(MappingSpecError, match="identifies a person") as info:
        load_mapping("hito", "seguimiento", mdir)
    assert "sheets[0].resources[0].fields.gender" in str(info.value)
    with _store_on("sqlite", tmp_path) as store:
        srv = Server(store, settings.model_copy(update={"mappings_dir": mdir}))
        try:
            r = _post_export(srv.client, EXAMPLES / "hito" / "hito_seguimiento_blinatumomab.xlsx", "hito", "seguimiento")
        finally:
            srv.stop()
    assert r.status_code == 400 and "identifies a person" in r.text
    wb = openpyxl.load_workbook(EXAMPLES / "hito" / "hito_seguimiento_blinatumomab.xlsx", read_only=True)
    names = [row[1] for row in wb["Pacientes"].iter_rows(min_row=2, values_only=True) if row[1]]
    assert names and not any(n in r.text for n in names)


def test_null_tokens_are_absent_values_not_parse_errors(tmp_path: Any, settings: Settings) -> None:
    import shutil

    from adapter.config import ROOT
    from adapter.ingest import ingest_file

    mdir = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mdir)
    mapping = mdir / "hito" / "erm_citometria.yaml"
    mapping.write_text(mapping.read_text(encoding="utf-8").replace(
        '  date_format: "%d/%m/%Y"\n', '  date_format: "%d/%m/%Y"\n  null_values: ["-", "NA", "n/a", "—"]\n', 1), encoding="utf-8")
    lines = (EXAMPLES / "hito" / "hito_erm_citometria.csv").read_bytes().decode("cp1252").split("\r\n")
    cells = lines[2].split(";")
    cells[12] = "-"  # Comentario (the time point): not recorded
    other = lines[3].split(";")
    other[12] = "n/a"
    path = tmp_path / "erm_nulls.csv"
    path.write_bytes("\r\n".join([lines[0], lines[1], ";".join(cells), ";".join(other)]).encode("cp1252"))
    with _store_on("sqlite", tmp_path) as store:
        report = ingest_file(path, "hito", "erm_citometria", store, settings=settings.model_copy(update={"mappings_dir": mdir}))
    assert report.rows_read == 3
    # the time point is required: a null token makes it missing, never a pattern or lookup failure
    about = {i.value: i.reason for i in report.issues if i.severity == "error"}
    assert about == {"-": "timepoint: required value is missing", "n/a": "timepoint: required value is missing"}
    with _store_on("sqlite", tmp_path / "plain") as store:  # without the declaration, "-" is a value that fails
        plain = ingest_file(path, "hito", "erm_citometria", store, settings=settings)
    assert {i.value: i.reason for i in plain.issues if i.severity == "error"}["-"] != "timepoint: required value is missing"


# ------------------------------------------------------------------ transforms and open concepts


def test_durations_decimal_ages_and_censored_numbers() -> None:
    from datetime import date
    from decimal import Decimal

    from adapter.errors import TransformError
    from adapter.mapping.patient import partial_birth_date
    from adapter.mapping.transforms import Age, Measured, TransformContext, age, offset, quantity

    comma = TransformContext(decimal=",", date_formats=("%d/%m/%Y",), tables={})
    dot = TransformContext(decimal=".", date_formats=("%d/%m/%Y",), tables={})
    assert offset("36,5", ctx=comma, reference="08/04/2019", unit="month") == offset("36.5", ctx=dot, reference=date(2019, 4, 8),
                                                                                     unit="month")
    assert (offset("36.5", ctx=dot, reference=date(2019, 4, 8), unit="month") - date(2019, 4, 8)).days == 1111  # 36.5 x 30.4375
    assert offset("-2", ctx=dot, reference=date(2020, 1, 10), unit="week") == date(2019, 12, 27)
    assert offset(1.5, ctx=dot, reference=date(2020, 1, 1), unit="year") == date(2021, 7, 2)  # 547.875 days -> 548
    with pytest.raises(TransformError, match="reference date is empty"):
        offset("3", ctx=dot, reference=None, unit="month")
    assert age("7.5 years", ctx=dot) == Age(Decimal("7.5"), "a")
    assert age("0,8", ctx=comma, unit="year") == Age(Decimal("0.8"), "a")
    assert age(12.0, ctx=dot, unit="year") == Age(12, "a") and age("11 meses", ctx=dot) == Age(11, "mo")
    with pytest.raises(TransformError, match="unit"):
        age("12", ctx=dot)  # a bare number's unit is not known
    assert partial_birth_date(Age(Decimal("7.5"), "a"), date(2020, 1, 15)) == "2012-07"
    assert partial_birth_date(Age(12, "a"), date(2020, 1, 15)) == "2008"
    assert quantity("<0,01", ctx=comma) == Measured(Decimal("0.01"), "<")
    assert quantity(">95", ctx=dot) == Measured(Decimal("95"), ">") and quantity("≤5", ctx=dot).comparator == "<="
    assert quantity(12, ctx=dot) == Measured(Decimal("12"))
    with pytest.raises(TransformError):
        quantity("about 5", ctx=dot)


def test_the_observation_concept_carries_any_finding_and_validates() -> None:
    from datetime import date
    from decimal import Decimal

    from adapter.mapping.base import SiteContext
    from adapter.mapping.observation import ObservationInput, to_observation
    from adapter.mapping.transforms import Concept, Measured
    from adapter.validation import get_validator

    site = SiteContext("x", "X", "MX", 0.01, False, "k")
    blasts = Concept("http://loinc.org", "11150-0", "Blasts/100 cells in Bone marrow", {"category": "laboratory"})
    obs = to_observation(ObservationInput(patient="1", code=blasts, effectiveDateTime=date(2021, 3, 1),
                                          value_quantity=Measured(Decimal("5"), "<"), unit="%"), site)[0]
    assert obs["valueQuantity"] == {"value": 5, "comparator": "<", "unit": "%", "system": "http://unitsofmeasure.org",
                                    "code": "%"}
    assert obs["category"][0]["coding"][0]["code"] == "laboratory"
    fusion = Concept("https://w3id.org/pedall-fhir/CodeSystem/observation-code", "fusion-gene", "Fusion gene")
    tp = Concept("https://w3id.org/pedall-fhir/CodeSystem/assessment-timepoint", "diagnosis", "At diagnosis")
    gene = to_observation(ObservationInput(patient="1", code=fusion, timepoint=tp, value_string="BCR-ABL1"), site)[0]
    for r in (obs, gene):
        assert get_validator().validate(r, full=True) == [], r
    with pytest.raises(ValueError, match="exactly one value"):
        to_observation(ObservationInput(patient="1", code=fusion, timepoint=tp), site)
    with pytest.raises(ValueError, match="unit"):
        to_observation(ObservationInput(patient="1", code=blasts, timepoint=tp, value_quantity=Decimal(3)), site)


# ---------------------------------------------------------------------- row order changes nothing


def _shuffled(path: Any, out_dir: Any, seed: int) -> Any:
    """A copy of an export with its data rows (CSV lines, each sheet's rows, HL7 messages) in
    another order; header rows stay first."""
    import csv
    import io as _io
    import random

    from adapter.readers.hl7v2 import split_messages

    rng = random.Random(seed)
    out = out_dir / path.name
    if path.suffix == ".xlsx":
        src = openpyxl.load_workbook(path)
        for ws in src.worksheets:
            rows = [[c.value for c in r] for r in ws.iter_rows(min_row=2)]
            rng.shuffle(rows)
            for i, values in enumerate(rows, start=2):
                for j, v in enumerate(values, start=1):
                    ws.cell(i, j).value = v
        src.save(out)
    elif path.suffix == ".hl7":
        messages = split_messages(path.read_bytes())
        rng.shuffle(messages)
        out.write_bytes(b"\r\n".join(messages) + b"\r\n")
    else:
        raw = path.read_bytes()
        encoding = "utf-8-sig" if raw.startswith(b"\xef\xbb\xbf") else ("utf-8" if _utf8(raw) else "cp1252")
        text = raw.decode(encoding)
        delimiter = ";" if text.split("\n", 1)[0].count(";") > text.split("\n", 1)[0].count(",") else ","
        rows = list(csv.reader(_io.StringIO(text, newline=""), delimiter=delimiter))
        header, body = rows[0], [r for r in rows[1:] if r]
        rng.shuffle(body)
        buf = _io.StringIO(newline="")
        csv.writer(buf, delimiter=delimiter, lineterminator="\r\n").writerows([header, *body])
        out.write_bytes(buf.getvalue().encode(encoding))
    return out


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _content(store: Any, site: str) -> dict[tuple[str, str], str]:
    import json

    return {(r["resourceType"], r["id"]): json.dumps({k: v for k, v in r.items() if k != "meta"}, sort_keys=True)
            for r in store.iter_resources(site=site) if r["resourceType"] != "Provenance"}


@pytest.mark.parametrize("site", SITES)
def test_shuffling_the_rows_of_a_sites_exports_changes_no_resource_and_no_figure(store: Any, tmp_path: Any,
                                                                                 settings: Settings, site: str) -> None:
    from adapter.ingest import ingest_file
    from adapter.outcomes.report import outcomes_report

    files = [(m, p) for s, m, p in ALL_EXAMPLE_FILES if s == site]
    for mapping, path in files:
        assert ingest_file(path, site, mapping, store, settings=settings).stored
    original = _content(store, site)
    figures = outcomes_report(store.cohort(site), site=site)
    with _store_on("sqlite", tmp_path / "shuffled") as other:
        (tmp_path / "rows").mkdir()
        for k, (mapping, path) in enumerate(reversed(files)):  # files in the other order too
            shuffled = _shuffled(path, tmp_path / "rows", seed=k + len(site))
            assert ingest_file(shuffled, site, mapping, other, settings=settings).stored
        assert _content(other, site) == original
        assert outcomes_report(other.cohort(site), site=site) == figures


def test_every_stored_resource_passes_the_core_invariants_the_adapter_can_break(network: Server) -> None:
    """mad-1 (45 of 199 MedicationAdministrations broke it: a dosage with only a route), per-1 and
    qty-3, over every resource of every example site, read back through the API."""
    from adapter.validation.validator import core_invariant_errors

    checked = 0
    for rtype in ("MedicationAdministration", "Observation", "MedicationDispense", "Encounter", "Procedure", "AdverseEvent"):
        for r in _all(network, rtype):
            assert core_invariant_errors(r) == [], r["id"]
            checked += 1
    assert checked > 500
    with_rate = [m for m in _all(network, "MedicationAdministration") if "dosage" in m]
    assert all("rateQuantity" in m["dosage"] for m in with_rate)
    assert core_invariant_errors({"resourceType": "MedicationAdministration", "dosage": {"route": {"text": "iv"}}})
    assert core_invariant_errors({"resourceType": "Encounter", "period": {"start": "2020-02-05", "end": "2020-02-01"}})
    assert core_invariant_errors({"resourceType": "Observation", "valueQuantity": {"value": 1, "code": "%"}})


def test_a_transplant_in_full_and_the_figures_of_the_first_graft() -> None:
    from datetime import date

    from adapter.config import ROOT
    from adapter.errors import TransformError
    from adapter.mapping.base import SiteContext
    from adapter.mapping.hsct import GraftEventInput, HSCTInput, to_graft_event, to_hsct_procedure
    from adapter.mapping.patient import PatientInput, to_patient
    from adapter.mapping.transforms import TransformContext, hla, lookup_each
    from adapter.outcomes.cohort import course_of
    from adapter.outcomes.report import group_figures
    from adapter.spec.loader import load_code_tables
    from adapter.validation import get_validator

    ctx = TransformContext(decimal=".", date_formats=("%d/%m/%Y",), tables=load_code_tables("hito", ROOT / "mappings"))
    assert hla("5/10", ctx=ctx).category == "haploidentical" and hla(" 8 / 8", ctx=ctx).category == "identical"
    assert hla("9/10", ctx=ctx).category == "mismatched" and hla("9/10", ctx=ctx).text == "9/10"
    with pytest.raises(TransformError):
        hla("11/10", ctx=ctx)
    sources = lookup_each("Médula ósea + Sangre periférica", ctx=ctx, table="stem_cell_source")
    assert [s.code for s in sources] == ["bone-marrow", "pbsc"]
    with pytest.raises(TransformError, match="no entry"):  # an unmapped part is an error, never dropped
        lookup_each("Médula ósea + Hígado fetal", ctx=ctx, table="stem_cell_source")
    site = SiteContext("x", "X", "MX", 0.01, False, "k")
    unrelated = ctx.tables["donor_relationship"].get("Unrelated")
    second = to_hsct_procedure(HSCTInput(patient="1", performedDateTime=date(2021, 3, 1), number=2,
                                         donor_relationship=ctx.tables["donor_relationship"].get("Madre"),
                                         hla_match=hla("5/10", ctx=ctx)), site)[0]
    first = to_hsct_procedure(HSCTInput(patient="1", performedDateTime=date(2020, 9, 1), number=1,
                                        donor_relationship=unrelated, hla_match=hla("9/10", ctx=ctx),
                                        stem_cell_source=sources, conditioning="Flu/Bu/Thio"), site)[0]
    neutro = to_graft_event(GraftEventInput(patient="1", number=1, day=14, graft_date=date(2020, 9, 1),
                                            event=ctx.tables["hsct_outcome"].get("ANC engraftment")), site)[0]
    plt = to_graft_event(GraftEventInput(patient="1", number=1, date=date(2020, 9, 20),
                                         event=ctx.tables["hsct_outcome"].get("PLT engraftment")), site)[0]
    for r in (first, second, neutro, plt):
        assert get_validator().validate(r, full=True) == [], r
    assert len(first["usedCode"]) == 2 and neutro["partOf"][0]["reference"] == f"Procedure/{first['id']}"
    pat = to_patient(PatientInput(patient="1"), site)[0]
    infusion = {"resourceType": "MedicationAdministration", "id": "m", "status": "completed",
                "subject": {"reference": f"Patient/{pat['id']}"}, "effectivePeriod": {"start": "2020-07-01", "end": "2020-07-28"}}
    for order in ([second, first], [first, second]):  # the stored order never changes the figures
        course = course_of(pat, {"Procedure": order, "Observation": [neutro, plt], "MedicationAdministration": [infusion]})
        assert course.hsct == date(2020, 9, 1) and course.hsct_count == 2
        assert course.donor == {"hla_match": "mismatched", "hla_as_written": "9/10", "relatedness": "unrelated",
                                "stem_cell_source": "bone-marrow+pbsc", "conditioning": "Flu/Bu/Thio"}
        assert (course.neutrophil_engraftment_day, course.platelet_engraftment_day) == (14, 19)
        hsct = group_figures([course])["hsct"]
        assert hsct["more_than_one_graft"] == 1 and hsct["bridging_days"]["median"] == 35.0


def test_therapy_lines_before_and_after_blinatumomab_are_counted_by_intent() -> None:
    from datetime import date

    from adapter.config import ROOT
    from adapter.mapping.base import SiteContext
    from adapter.mapping.patient import PatientInput, to_patient
    from adapter.mapping.therapy import TherapyInput, to_therapy
    from adapter.outcomes.cohort import course_of
    from adapter.outcomes.report import group_figures
    from adapter.spec.loader import load_code_tables
    from adapter.validation import get_validator

    t = load_code_tables("hito", ROOT / "mappings")
    site = SiteContext("x", "X", "MX", 0.01, False, "k")
    lines = [to_therapy(TherapyInput(patient="1", therapy=t["therapy"].get("Quimioterapia"), intent=t["therapy_intent"].get("previa"),
                                     text="ALL IC-BFM 2009", line=1, start=date(2018, 1, 5), end=date(2019, 1, 5)), site)[0],
             to_therapy(TherapyInput(patient="1", therapy=t["therapy"].get("CAR-T"), intent=t["therapy_intent"].get("rescate"),
                                     start=date(2021, 2, 1)), site)[0],
             to_therapy(TherapyInput(patient="1", therapy=t["therapy"].get("Abandono"), intent=None), site)[0]]
    for r in lines:
        assert get_validator().validate(r, full=True) == [], r
    assert lines[0]["code"]["text"] == "ALL IC-BFM 2009" and lines[0]["extension"][0]["valueInteger"] == 1
    pat = to_patient(PatientInput(patient="1"), site)[0]
    infusion = {"resourceType": "MedicationAdministration", "id": "m", "status": "completed",
                "subject": {"reference": f"Patient/{pat['id']}"}, "effectivePeriod": {"start": "2020-07-01", "end": "2020-07-28"}}
    course = course_of(pat, {"Procedure": lines, "MedicationAdministration": [infusion]})
    assert group_figures([course])["therapies"] == {"prior": {"chemotherapy": 1}, "salvage": {"car-t": 1},
                                                    "unstated": {"treatment-abandoned": 1}}


def _responses(srv: Server, site: str) -> dict[str, dict[str, Any]]:
    """The current response Observation of each Patient of ``site``, read as a generic FHIR client
    would: profile pedall-response, not entered-in-error."""
    sd = "https://w3id.org/pedall-fhir/StructureDefinition/pedall-response"
    out = {}
    for o in _all(srv, "Observation", _site=site):
        if sd in o.get("meta", {}).get("profile", []) and o.get("status") != "entered-in-error":
            out[o["subject"]["reference"].split("/")[1]] = o
    return out


def test_derived_responses_are_fhir_observations_and_give_the_facades_counts(network: Server) -> None:
    """HITO records no response: the responses its MRD results imply are stored as pedall-response
    Observations (method derived-from-mrd, derivedFrom the MRD Observations read), so counting
    responses from FHIR gives the facade's counts. A response recorded through the API replaces
    the derived one; deleting it brings the derived one back. Nothing else moves."""
    from collections import Counter

    from adapter.outcomes.derive import METHOD_SYSTEM, derived_id

    responses = _responses(network, "hito")
    assert len(responses) >= 5
    for pid, o in responses.items():
        assert o["id"] == derived_id(pid)
        assert o["method"]["coding"][0] == {"system": METHOD_SYSTEM, "code": "derived-from-mrd",
                                            "display": "Derived from MRD results"}
        for ref in o["derivedFrom"]:
            mrd = network.client.get(f"/{ref['reference']}").json()
            assert mrd["subject"]["reference"] == f"Patient/{pid}" and "valueQuantity" in mrd
    counts = Counter(o["valueCodeableConcept"]["coding"][0]["code"] for o in responses.values())
    report = network.client.get("/outcomes", params={"site": "hito", "suppress": "false"}).json()["sites"]["hito"]
    assert {k: v for k, v in report["response"]["counts"].items() if v and k != "not-assessed"} == dict(counts)
    # a response recorded through the API takes the derived one's place
    pid, derived = next((p, o) for p, o in sorted(responses.items())
                        if o["valueCodeableConcept"]["coding"][0]["code"] != "pd")
    recorded = {k: v for k, v in derived.items() if k not in ("id", "meta", "method", "derivedFrom")}
    recorded["meta"] = {"profile": derived["meta"]["profile"]}
    recorded["valueCodeableConcept"] = {"coding": [{"system": "https://w3id.org/pedall-fhir/CodeSystem/blinatumomab-response",
                                                    "code": "pd", "display": "Progressive disease"}]}
    r = network.client.post("/Observation", json=recorded, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 201, r.text[:400]
    new_id = r.json()["id"]
    try:
        assert network.client.get(f"/Observation/{derived['id']}").status_code in (404, 410)
        after = network.client.get("/outcomes", params={"site": "hito", "suppress": "false"}).json()["sites"]["hito"]
        assert after["response"]["counts"]["pd"] == report["response"]["counts"]["pd"] + 1
        assert sum(after["response"]["counts"].values()) == sum(report["response"]["counts"].values())
        assert _responses(network, "hito")[pid]["id"] == new_id
    finally:
        assert network.client.delete(f"/Observation/{new_id}").status_code in (200, 204)
    back = network.client.get(f"/Observation/{derived['id']}")
    assert back.status_code == 200 and back.json()["valueCodeableConcept"] == derived["valueCodeableConcept"]
    assert network.client.get("/outcomes", params={"site": "hito", "suppress": "false"}).json()["sites"]["hito"] == report
