"""What a Subscription may ask for (adapter/subscriptions/spec.py): criteria, channel, payload
content, and the endpoint policy inside and outside development mode."""

from __future__ import annotations

from typing import Any

import pytest

from adapter.subscriptions.spec import BACKPORT, MRD_TOPIC, SubscriptionError, parse_subscription

MRD = "https://w3id.org/pedall-fhir/CodeSystem/observation-code|mrd"


def _sub(endpoint: str, payload: str | None = "application/fhir+json", **kw: Any) -> dict[str, Any]:
    channel = {"type": "rest-hook", "endpoint": endpoint, **({"payload": payload} if payload else {})}
    return {"resourceType": "Subscription", "id": "s1", "status": "requested", "reason": "r",
            "criteria": f"Observation?code={MRD}", "channel": channel, **kw}


def test_endpoint_policy() -> None:
    assert parse_subscription(_sub("http://127.0.0.1:9000/fhir")).full_resource  # loopback, development
    with pytest.raises(SubscriptionError, match="https"):
        parse_subscription(_sub("http://ehr.example.org/fhir"))
    assert not parse_subscription(_sub("http://ehr.example.org/fhir", payload=None)).full_resource  # notify only
    with pytest.raises(SubscriptionError, match="https"):  # production: loopback is not enough
        parse_subscription(_sub("http://127.0.0.1:9000/fhir"), development=False, allowlist=("http://127.0.0.1",))
    with pytest.raises(SubscriptionError, match="allow-list"):
        parse_subscription(_sub("https://ehr.example.org/fhir"), development=False, allowlist=("https://ehr.hospital.mx/",))
    ok = parse_subscription(_sub("https://ehr.hospital.mx/fhir"), development=False, allowlist=("https://ehr.hospital.mx/",))
    assert ok.endpoint == "https://ehr.hospital.mx/fhir"


@pytest.mark.parametrize(("change", "says"), [
    ({"criteria": "Observation?shoe-size=1"}, "shoe-size"),
    ({"criteria": f"Observation?code={MRD}&_count=5"}, "result parameters"),
    ({"criteria": "Nonsense?x=1"}, "not supported"),
    ({"channel": {"type": "websocket", "endpoint": "ws://x"}}, "rest-hook"),
    ({"channel": {"type": "rest-hook", "endpoint": "ftp://x/"}}, "http"),
    ({"channel": {"type": "rest-hook", "endpoint": "https://x/", "header": ["no colon"]}}, "Name: value"),
    ({"channel": {"type": "rest-hook", "endpoint": "https://x/", "payload": "application/xml"}}, "payload"),
])
def test_refused(change: dict[str, Any], says: str) -> None:
    with pytest.raises(SubscriptionError, match=says):
        parse_subscription({**_sub("https://x/"), **change})


def test_backport_topic_filters_on_patient_interpretation_and_site() -> None:
    sub = {**_sub("https://ehr.example.org/fhir"), "criteria": MRD_TOPIC,
           "meta": {"profile": [BACKPORT + "backport-subscription"]},
           "_criteria": {"extension": [{"url": BACKPORT + "backport-filter-criteria",
                                        "valueString": "Observation?patient=Patient/p1&interpretation=POS&_site=hito"}]}}
    spec = parse_subscription(sub)
    assert spec.topic == MRD_TOPIC and spec.content == "id-only"
    assert [c.name for c in spec.query.clauses] == ["code", "patient", "interpretation", "_site"]
    with pytest.raises(SubscriptionError, match="must filter Observation"):
        parse_subscription({**sub, "_criteria": {"extension": [{"url": BACKPORT + "backport-filter-criteria",
                                                                 "valueString": "Patient?gender=female"}]}})


@pytest.mark.parametrize("endpoint", [
    "https://ehr.example@127.0.0.1:8491/x",  # user information: the host is 127.0.0.1
    "https://ehr.example/hook/../internal-admin",  # a dot segment leaves the allowed path
    "https://ehr.example/hook/%2e%2e/internal-admin",  # ... encoded
    "https://ehr.example/hookother",  # not on a segment boundary
    "https://ehr.example.attacker.invalid/x",  # another host that starts with the same text
    "https://ehr.example:8443/hook",  # another port
    "http://ehr.example/hook",  # another scheme
])
def test_the_allow_list_compares_parsed_urls_not_strings(endpoint: str) -> None:
    with pytest.raises(SubscriptionError):
        parse_subscription(_sub(endpoint), development=False, allowlist=("https://ehr.example/hook",))


@pytest.mark.parametrize("endpoint", ["https://ehr.example/hook", "https://EHR.example/hook/mrd", "https://ehr.example:443/hook?x=1"])
def test_the_allow_list_admits_its_own_paths(endpoint: str) -> None:
    assert parse_subscription(_sub(endpoint), development=False, allowlist=("https://ehr.example/hook",))
    assert parse_subscription(_sub(endpoint), development=False, allowlist=("https://ehr.example/",))


def test_user_information_is_refused_in_development_too() -> None:
    with pytest.raises(SubscriptionError, match="user information"):
        parse_subscription(_sub("http://someone@127.0.0.1:9000/fhir"))
