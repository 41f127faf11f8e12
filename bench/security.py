"""What security costs per request (a documented command, not a test).

    .venv/bin/python bench/security.py [--requests 2000] [--postgres URL]

Ingests the HITO and HUANL example exports into a new store (an SQLite file, then with --postgres
also a throwaway PostgreSQL database), then drives two real uvicorn servers over HTTP with the same requests:
the baseline with authentication off (development mode; still one AuditEvent per request), and
the secured one, where every request carries a site client's bearer token, is checked against the
client registry and confined to the site in SQL, and is audited. Reports p50/p95/p99 of a read by
id and of a patient-scoped MRD search, and the token endpoint's latency (assertion check + jti).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
import jwt  # noqa: E402
import uvicorn  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from pgdb import database_urls  # noqa: E402

from adapter.api import create_app  # noqa: E402
from adapter.auth.clients import check_registration  # noqa: E402
from adapter.auth.tokens import ASSERTION_TYPE  # noqa: E402
from adapter.config import Settings  # noqa: E402
from adapter.ingest import ingest_file  # noqa: E402
from adapter.store import Store  # noqa: E402
from adapter.store.security import ClientRegistry  # noqa: E402

EXPORTS = [("hito", "seguimiento", "examples/hito/hito_seguimiento_blinatumomab.xlsx"),
           ("hito", "erm_citometria", "examples/hito/hito_erm_citometria.csv"),
           ("huanl", "curso_corto", "examples/huanl/huanl_blinatumomab_curso_corto.xlsx")]


def _serve(store: Store, settings: Settings, port: int) -> uvicorn.Server:
    server = uvicorn.Server(uvicorn.Config(create_app(settings, store), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server


def _pct(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"p50 {q[49] * 1000:6.2f} ms  p95 {q[94] * 1000:6.2f} ms  p99 {q[98] * 1000:6.2f} ms"


def _drive(client: httpx.Client, urls: list[str]) -> list[float]:
    out = []
    for url in urls:
        t = time.perf_counter()
        r = client.get(url)
        out.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text[:200]
    return out


def run(url: str, n: int) -> None:
    store = Store(url)
    store.migrate()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _measure(store, n, Path(tmp))
    finally:
        store.engine.dispose()


def _measure(store: Store, n: int, tmp: Path) -> None:
    base_settings = Settings(database_url=str(store.engine.url), id_key="bench-id-key", pseudonym_key="bench-pseudonym",
                             export_dir=tmp / "exports")
    for site, mapping, path in EXPORTS:
        ingest_file(ROOT / path, site, mapping, store, settings=base_settings)
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key())), "kid": "k1", "alg": "ES384"}
    scopes = check_registration("site", "hito", None, {"keys": [jwk]})
    client_id = ClientRegistry(store).add("bench", "site", "hito", scopes, {"keys": [jwk]}).client_id
    obs = [r["id"] for r in store.iter_resources("Observation", site="hito")][:50]
    pats = [r["id"] for r in store.iter_resources("Patient", site="hito")][:20]
    urls = [f"/Observation/{obs[i % len(obs)]}" for i in range(n)]
    searches = [f"/Observation?patient={pats[i % len(pats)]}&code=mrd" for i in range(n // 4)]
    open_srv = _serve(store, base_settings, 8761)
    secure_settings = base_settings.model_copy(update={"auth": True, "token_key": "bench-token-key-" + "x" * 32})
    secure_srv = _serve(store, secure_settings, 8762)
    try:
        with httpx.Client(base_url="http://127.0.0.1:8761") as c:
            _drive(c, urls[:100])  # warm-up
            base_read, base_search = _drive(c, urls), _drive(c, searches)
        token_times = []
        with httpx.Client(base_url="http://127.0.0.1:8762") as c:
            for _ in range(100):
                assertion = jwt.encode({"iss": client_id, "sub": client_id, "aud": "http://127.0.0.1:8762/auth/token",
                                        "exp": int(time.time()) + 240, "jti": str(uuid.uuid4())}, key, algorithm="ES384",
                                       headers={"kid": "k1"})
                t = time.perf_counter()
                r = c.post("/auth/token", data={"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                                                 "client_assertion": assertion, "scope": "system/*.rs"})
                token_times.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
            c.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
            _drive(c, urls[:100])
            sec_read, sec_search = _drive(c, urls), _drive(c, searches)
    finally:
        open_srv.should_exit = secure_srv.should_exit = True
        time.sleep(1)  # let the servers write their last audit events before the database goes
    print(f"backend: {store.engine.dialect.name}, {n} reads, {n // 4} searches")  # noqa: T201
    print(f"read by id      baseline (auth off)  {_pct(base_read)}")  # noqa: T201
    print(f"read by id      secured (token+site) {_pct(sec_read)}")  # noqa: T201
    print(f"MRD search      baseline (auth off)  {_pct(base_search)}")  # noqa: T201
    print(f"MRD search      secured (token+site) {_pct(sec_search)}")  # noqa: T201
    print(f"token endpoint  (ES384 assertion)    {_pct(token_times)}")  # noqa: T201


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--postgres", help="a PostgreSQL server URL (a throwaway database is made on it)")
    args = ap.parse_args()
    for url in database_urls(args.postgres):
        run(url, args.requests)


if __name__ == "__main__":
    main()
