"""What generic FHIR clients expect of the R4 HTTP API (issue 20), over a real uvicorn server on
SQLite and PostgreSQL holding every example export: time zones in date search, ``_lastUpdated``
and history ``_since`` (R4 §3.1.1.4.5, §3.1.0.9); conditional references in transactions and
batches (R4 §3.1.0.11.2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tests.server import Server
from tests.test_api import _all, _example

#: One instant written three ways (R4 dateTime: an offset or Z); the third is the second's
#: previous evening west of Greenwich.
SPELLINGS = ("2020-01-01T00:00:00Z", "2020-01-01T05:30:00+05:30", "2019-12-31T18:00:00-06:00")


def _ids(api: Server, rtype: str, params: dict[str, str]) -> set[str]:
    return {r["id"] for r in _all(api, rtype, {**params, "_count": "1000"})}


def _spell(instant: datetime) -> list[str]:
    """``instant`` (aware) written with Z, +05:30 and -06:00."""
    return [instant.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            instant.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat(),
            instant.astimezone(timezone(timedelta(hours=-6))).isoformat()]


@pytest.mark.parametrize("prefix", ["ge", "lt", "gt", "le", "eq"])
def test_one_instant_in_three_time_zones_finds_one_set(api: Server, prefix: str) -> None:
    """R4 §3.1.1.4.5: a date search value with an offset is an instant; Z, +05:30 and -06:00
    spellings of it return the same Observations (before: 205, 0 and 473)."""
    sets = [_ids(api, "Observation", {"date": prefix + s}) for s in SPELLINGS]
    assert sets[0] == sets[1] == sets[2]
    if prefix != "eq":
        everything = _ids(api, "Observation", {})
        assert 0 < len(sets[0]) < len(everything), (prefix, len(sets[0]), len(everything))


def test_a_stored_offset_is_compared_as_its_instant(api: Server) -> None:
    """A result written at 01:00 on 1 March in India (+05:30) happened on 28 February in UTC, the
    server's time zone: a day search finds it on the 28th, not the 1st; an instant search finds it
    in any spelling."""
    obs = _example("pedall-mrd-1")
    obs["id"] = "tz-offset-1"
    obs["effectiveDateTime"] = "2031-03-01T01:00:00+05:30"
    assert api.client.put("/Observation/tz-offset-1", json=obs).status_code in (200, 201)
    assert "tz-offset-1" in _ids(api, "Observation", {"date": "2031-02-28"})
    assert "tz-offset-1" not in _ids(api, "Observation", {"date": "2031-03-01"})
    for spelling in ("2031-02-28T19:30:00Z", "2031-03-01T01:00:00+05:30", "2031-02-28T13:30:00-06:00"):
        assert "tz-offset-1" in _ids(api, "Observation", {"date": f"eq{spelling}"}), spelling
    assert "tz-offset-1" not in _ids(api, "Observation", {"date": "eq2031-02-28T19:31:00Z"})


def test_last_updated_compares_instants(api: Server) -> None:
    """``_lastUpdated`` (R4 §3.1.1.5): one second before a write, in any of three spellings, finds
    it; one second after, in any spelling, does not."""
    org = _example("pedall-organization-1")
    org["id"] = "tz-last-updated"
    r = api.client.put("/Organization/tz-last-updated", json=org)
    assert r.status_code in (200, 201)
    stamp = datetime.fromisoformat(r.json()["meta"]["lastUpdated"].replace("Z", "+00:00"))
    for spelling in _spell(stamp - timedelta(seconds=1)):
        assert "tz-last-updated" in _ids(api, "Organization", {"_lastUpdated": f"ge{spelling}"}), spelling
    for spelling in _spell(stamp + timedelta(seconds=1)):
        assert "tz-last-updated" not in _ids(api, "Organization", {"_lastUpdated": f"ge{spelling}"}), spelling


def test_history_since_and_count(api: Server) -> None:
    """Instance history ``_since`` (R4 §3.1.0.9) is an instant with its offset, ``_count`` the most
    recent versions; another parameter, a bad value or an instant without a zone is a 400."""
    org = _example("pedall-organization-1")
    org["id"] = "tz-history"
    first = api.client.put("/Organization/tz-history", json=org).json()["meta"]["lastUpdated"]
    for name in ("one", "two"):
        api.client.put("/Organization/tz-history", json={**org, "name": name})
    all_versions = api.client.get("/Organization/tz-history/_history").json()
    assert [e["response"]["etag"] for e in all_versions["entry"]] == ['W/"3"', 'W/"2"', 'W/"1"']
    after_first = datetime.fromisoformat(first.replace("Z", "+00:00")) + timedelta(microseconds=1)
    for spelling in _spell(after_first):
        b = api.client.get("/Organization/tz-history/_history", params={"_since": spelling}).json()
        assert [e["response"]["etag"] for e in b["entry"]] == ['W/"3"', 'W/"2"'], spelling
    b = api.client.get("/Organization/tz-history/_history", params={"_count": "1"}).json()
    assert [e["response"]["etag"] for e in b["entry"]] == ['W/"3"']
    for params in ({"_since": "yesterday"}, {"_since": "2020-01-01T00:00:00"}, {"_count": "-1"}, {"_at": "2020"}):
        r = api.client.get("/Organization/tz-history/_history", params=params)
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome", params


def test_capability_statement_states_the_time_zone(api: Server) -> None:
    doc = api.client.get("/metadata").json()["rest"][0]["documentation"]
    assert "UTC" in doc and "time zone" in doc
