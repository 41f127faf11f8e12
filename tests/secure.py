"""Shared by the security tests (tests/test_security.py, tests/test_attacks.py): a real server with
authentication on, on each backend, holding the HITO and HUANL examples, with SMART Backend
Services clients registered with real RSA (RS384) and EC P-384 (ES384) keys; every token comes from
the token endpoint with a signed client assertion, as a hospital's integration engine would get it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from adapter.auth.clients import check_registration
from adapter.auth.tokens import ASSERTION_TYPE
from adapter.config import Settings
from adapter.ingest import ingest_file
from adapter.store import Store
from adapter.store.security import ClientRegistry
from tests.server import Server, check_response

TOKEN_KEY = "test-token-signing-key-of-at-least-32-characters"
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
FHIR_JSON = {"content-type": "application/fhir+json"}


def _keypair(kind: str) -> tuple[Any, dict[str, Any], str]:
    """(private key, public JWK, alg) for RS384 or ES384."""
    if kind == "RS384":
        key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    else:
        key = ec.generate_private_key(ec.SECP384R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    kid = uuid.uuid4().hex[:8]
    return key, {**jwk, "kid": kid, "alg": kind, "use": "sig"}, kind


@dataclass
class Client:
    client_id: str
    key: Any
    kid: str
    alg: str
    role: str
    site: str | None
    token: str = ""
    token_at: float = 0.0  # time.monotonic() when the token was issued


@dataclass
class Secure:
    """The running server, its store, the registered clients and example ids."""

    srv: Server
    store: Store
    settings: Settings
    clients: dict[str, Client] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def token_url(self) -> str:
        return f"{self.srv.base}/auth/token"

    def assertion(self, c: Client, **over: Any) -> str:
        now = int(time.time())
        claims = {"iss": c.client_id, "sub": c.client_id, "aud": self.token_url, "exp": now + 240,
                  "jti": str(uuid.uuid4()), **over}
        return jwt.encode(claims, c.key, algorithm=c.alg, headers={"kid": c.kid})

    def get_token(self, c: Client, assertion: str | None = None, scope: str | None = None) -> httpx.Response:
        return self.srv.client.post("/auth/token", data={
            "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion or self.assertion(c),
            "scope": scope or {"site": "system/*.cruds", "subscriber": "system/Subscription.cruds system/Observation.rs "
                               "system/Patient.rs", "coordinator": "system/*.rs", "admin": "system/AuditEvent.rs"}[c.role]})

    def register(self, name: str, role: str, site: str | None, alg: str = "RS384") -> Client:
        key, jwk, alg = _keypair(alg)
        jwks = {"keys": [jwk]}
        scopes = check_registration(role, site, None, jwks)
        reg = ClientRegistry(self.store).add(name, role, site, scopes, jwks)
        return Client(reg.client_id, key, jwk["kid"], alg, role, site)

    def http(self, who: str) -> httpx.Client:
        """An HTTP client carrying ``who``'s bearer token (fetched once, and again when half its
        lifetime has passed: a slow machine's module outlasts a 5-minute token)."""
        c = self.clients[who]
        if not c.token or time.monotonic() - c.token_at > self.settings.token_lifetime_seconds / 2:
            r = self.get_token(c)
            assert r.status_code == 200, r.text
            c.token, c.token_at = r.json()["access_token"], time.monotonic()
        return httpx.Client(base_url=self.srv.base, timeout=60, headers={"Authorization": f"Bearer {c.token}"},
                            event_hooks={"response": [check_response]})


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def secure(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Iterator[Secure]:
    from tests.conftest import EXAMPLE_FILES, _store_on  # (conftest imports this module)

    with _store_on(request.param, tmp_path_factory.mktemp("secure")) as store:
        for site, mapping, path in EXAMPLE_FILES:
            assert ingest_file(path, site, mapping, store, settings=settings).rows_rejected == 0
        s = settings.model_copy(update={"auth": True, "token_key": TOKEN_KEY, "max_upload_bytes": 1_000_000,
                                        "export_max_jobs": 50, "export_dir": tmp_path_factory.mktemp("sec-exports")})
        srv = Server(store, s)
        sec = Secure(srv, store, s)
        try:
            sec.clients = {"site": sec.register("HITO engine", "site", "hito"),
                           "site-huanl": sec.register("HUANL engine", "site", "huanl", "ES384"),
                           "subscriber": sec.register("HITO EHR", "subscriber", "hito"),
                           "coordinator": sec.register("Study coordination", "coordinator", None, "ES384"),
                           "admin": sec.register("Security officer", "admin", None)}
            for site in ("hito", "huanl"):
                pats = sorted(r["id"] for r in store.iter_resources("Patient", site=site))
                obs = sorted(r["id"] for r in store.iter_resources("Observation", site=site) if "valueQuantity" in r)  # MRD
                sec.ids[f"{site}-patient"], sec.ids[f"{site}-observation"] = pats[0], obs[0]
            yield sec
        finally:
            srv.stop()




def _wait(c: httpx.Client, url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        r = c.get(url)
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 202, r.text
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _lines(c: httpx.Client, manifest: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    out = []
    for o in manifest["output"]:
        if o["type"] == rtype:
            r = c.get(o["url"])
            assert r.status_code == 200
            out += [json.loads(line) for line in r.text.splitlines() if line]
    return out


def _subscription(criteria: str) -> dict[str, Any]:
    return {"resourceType": "Subscription", "status": "off", "reason": "MRD results for the EHR", "criteria": criteria,
            "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook", "payload": "application/fhir+json"}}
