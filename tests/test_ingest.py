"""Idempotency, versioning, provenance, row issues, --strict, dry runs and atomicity, on both backends."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from adapter.config import Settings
from adapter.errors import IngestRejected, ReaderError
from adapter.ingest import ingest_file
from adapter.store import Store
from tests.conftest import EXAMPLE_FILES, EXAMPLES

HITO_CSV = EXAMPLES / "hito" / "hito_erm_citometria.csv"


def _ingest_all(store: Store, settings: Settings) -> None:
    for site, mapping, path in EXAMPLE_FILES:
        ingest_file(path, site, mapping, store, settings=settings)


def _edited_csv(tmp_path: Path, old: str, new: str) -> Path:
    text = HITO_CSV.read_bytes().decode("cp1252")
    assert text.count(old) == 1
    out = tmp_path / "hito_erm_citometria.csv"
    out.write_bytes(text.replace(old, new).encode("cp1252"))
    return out


def test_reingest_changes_nothing(store: Store, settings: Settings) -> None:
    _ingest_all(store, settings)
    counts, versions = store.counts(), store.version_total()
    for site, mapping, path in EXAMPLE_FILES:
        report = ingest_file(path, site, mapping, store, settings=settings)
        assert {o.outcome for o in report.outcomes} == {"unchanged"}
        assert report.provenance_ids == []
    assert store.counts() == counts
    assert store.version_total() == versions


def test_corrected_value_makes_exactly_one_new_version(store: Store, settings: Settings, tmp_path: Path) -> None:
    _ingest_all(store, settings)
    versions = store.version_total()
    edited = _edited_csv(tmp_path, "CF-190399;016197;ZÚÑIGA BECERRIL MELANY;10/10/2003;F;15/07/2019;16/07/2019;"
                                   "Médula ósea;ERM por citometría de flujo 8 colores;0,21",
                         "CF-190399;016197;ZÚÑIGA BECERRIL MELANY;10/10/2003;F;15/07/2019;16/07/2019;"
                         "Médula ósea;ERM por citometría de flujo 8 colores;0,31")
    report = ingest_file(edited, "hito", "erm_citometria", store, settings=settings)
    changed = [o for o in report.outcomes if o.outcome != "unchanged"]
    assert [(o.type, o.outcome, o.version_id) for o in changed] == [("Observation", "updated", 2)]
    obs = store.read("Observation", changed[0].id)
    assert obs["valueQuantity"]["value"] == 0.31 and obs["meta"]["versionId"] == "2"
    history = store.history("Observation", changed[0].id)
    assert [h["valueQuantity"]["value"] for h in history] == [0.21, 0.31]
    # one new Observation version + the Provenance of this ingestion
    assert store.version_total() == versions + 2
    assert len(report.provenance_ids) == 1
    prov = store.read("Provenance", report.provenance_ids[0])
    assert prov["target"][0]["reference"] == f"Observation/{changed[0].id}/_history/2"
    assert prov["target"][0]["extension"][0]["valueString"] == "hito_erm_citometria.csv!8"  # header is row 1
    assert prov["agent"][0]["who"]["reference"] == "Organization/hito"
    assert prov["entity"][0]["what"]["identifier"]["value"] == report.sha256


def test_bad_rows_are_reported_and_good_rows_stored(store: Store, settings: Settings, tmp_path: Path) -> None:
    edited = _edited_csv(tmp_path, ";02/04/2019;03/04/2019;Médula ósea;ERM por citometría de flujo 8 colores;24,56;",
                         ";31/02/2019;03/04/2019;Médula ósea;ERM por citometría de flujo 8 colores;veinte;")
    report = ingest_file(edited, "hito", "erm_citometria", store, settings=settings)
    assert (report.rows_read, report.rows_mapped, report.rows_rejected) == (26, 25, 1)
    diags = [i["diagnostics"] for i in report.operation_outcome()["issue"]]
    assert any("row=2" in d and "column=Fecha de toma" in d and "'31/02/2019'" in d for d in diags)
    assert any("row=2" in d and "column=Resultado" in d and "'veinte'" in d for d in diags)
    assert store.counts()["Observation"] == 25


def test_strict_rejects_the_whole_file(store: Store, settings: Settings, tmp_path: Path) -> None:
    edited = _edited_csv(tmp_path, ";24,56;", ";abc;")
    with pytest.raises(IngestRejected) as exc:
        ingest_file(edited, "hito", "erm_citometria", store, settings=settings, strict=True)
    assert exc.value.report.rows_rejected == 1
    assert store.counts() == {}


def test_dry_run_stores_nothing(store: Store, settings: Settings) -> None:
    report = ingest_file(HITO_CSV, "hito", "erm_citometria", store, settings=settings, dry_run=True)
    assert report.rows_mapped == 26 and not report.stored
    assert store.counts() == {}


def test_cli_dry_run_shows_the_first_resources_and_stores_nothing(store: Store, monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    """``adapter ingest --dry-run --show N``: an integration engineer tries a mapping file."""
    import json

    from typer.testing import CliRunner

    from adapter.cli import app as cli
    from adapter.config import get_settings

    monkeypatch.setenv("ADAPTER_DATABASE_URL", store.url)
    get_settings.cache_clear()
    try:
        edited = tmp_path / "hito_erm_citometria.csv"
        edited.write_bytes(HITO_CSV.read_bytes().replace(b";0,21;", b";0,2x1;", 1))
        out = CliRunner().invoke(cli, ["ingest", str(edited), "--site", "hito", "--mapping", "erm_citometria",
                                       "--dry-run", "--show", "3"])
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 0, out.output
    decoder, text, shown = json.JSONDecoder(), out.output, []
    while text.lstrip().startswith("{"):
        res, end = decoder.raw_decode(text.lstrip())
        shown.append(res)
        text = text.lstrip()[end:]
    assert len(shown) == 3 and all("resourceType" in r and "id" in r for r in shown)
    flat = " ".join(out.output.split())
    assert "dry run, nothing stored" in flat and "value='0,2x1'" in flat  # the row issue, with its value
    assert store.counts() == {}


def test_failure_midway_leaves_store_unchanged(store: Store, settings: Settings, tmp_path: Path) -> None:
    _ingest_all(store, settings)
    before = {r["id"]: r for r in store.iter_resources()}
    broken = tmp_path / "hito_erm_citometria.csv"
    data = HITO_CSV.read_bytes()
    broken.write_bytes(data.replace(b";0,21;", b";0,99;", 1) + b"CF-9;\xff\xfe\x00;bad\r\n" * 2
                       + bytes([0x81]) * 5)  # 0x81 is undefined in cp1252: the reader fails at the end
    with pytest.raises(ReaderError):
        ingest_file(broken, "hito", "erm_citometria", store, settings=settings,
                    )
    assert {r["id"]: r for r in store.iter_resources()} == before


def test_duplicate_keys_in_one_file_are_reported(store: Store, settings: Settings, tmp_path: Path) -> None:
    text = HITO_CSV.read_bytes().decode("cp1252").splitlines()
    dup = text[1].replace(";24,56;", ";25,00;")
    out = tmp_path / "dup.csv"
    out.write_bytes("\r\n".join([*text, dup, ""]).encode("cp1252"))
    report = ingest_file(out, "hito", "erm_citometria", store, settings=settings)
    assert report.rows_rejected == 1
    assert "conflicts with the one from dup.csv!2" in report.operation_outcome()["issue"][0]["diagnostics"]


def test_unreadable_workbook_is_a_reader_error(store: Store, settings: Settings, tmp_path: Path) -> None:
    fake = tmp_path / "x.xlsx"
    shutil.copy(HITO_CSV, fake)
    with pytest.raises(ReaderError, match="not a readable XLSX"):
        ingest_file(fake, "hito", "seguimiento", store, settings=settings)


def test_large_ingestions_split_provenance(store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import adapter.ingest

    monkeypatch.setattr(adapter.ingest, "PROVENANCE_TARGETS", 10)
    report = ingest_file(HITO_CSV, "hito", "erm_citometria", store, settings=settings)
    assert len(report.provenance_ids) == 3  # 26 Observations + the Organization = 27 targets
    targets = [t["reference"] for pid in report.provenance_ids for t in store.read("Provenance", pid)["target"]]
    expected = {f"{o.type}/{o.id}/_history/{o.version_id}" for o in report.outcomes if o.type != "Provenance"}
    assert len(targets) == 27 and set(targets) == expected
    assert len({store.read("Provenance", pid)["recorded"] for pid in report.provenance_ids}) == 1


def test_an_ingestion_raises_the_gc_threshold_and_restores_it(store: Store, settings: Settings) -> None:
    """``fewer_gc_collections``: the young-generation threshold is raised while ingestions run (also
    when they overlap in threads) and restored when the last one ends, even when one fails."""
    import gc
    import threading

    from adapter.ingest import INGEST_GC_THRESHOLD, fewer_gc_collections

    before = gc.get_threshold()
    seen: list[int] = []
    real = store.run

    def spy(work, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(gc.get_threshold()[0])
        return real(work, *a, **kw)

    store.run = spy  # type: ignore[method-assign]
    ingest_file(EXAMPLES / "hito" / "hito_erm_citometria.csv", "hito", "erm_citometria", store, settings=settings)
    assert seen == [INGEST_GC_THRESHOLD] and gc.get_threshold() == before

    inside, release = threading.Barrier(3), threading.Event()

    def hold(fail: bool) -> None:
        try:
            with fewer_gc_collections():
                inside.wait(5)
                release.wait(5)
                if fail:
                    raise RuntimeError("boom")
        except RuntimeError:
            pass

    threads = [threading.Thread(target=hold, args=(f,)) for f in (True, False)]
    for t in threads:
        t.start()
    inside.wait(5)
    assert gc.get_threshold()[0] == INGEST_GC_THRESHOLD
    release.set()
    threads[0].join(5)
    threads[1].join(5)
    assert gc.get_threshold() == before
