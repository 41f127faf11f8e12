"""Subscription notification latency benchmark (a documented command, not a test).

    .venv/bin/python bench/subscriptions.py [--results 10000] [--subscriptions 100] [--per-bundle 10] [--postgres URL]

Starts `adapter serve` (a real process, on a new PostgreSQL database, or SQLite with
``--sqlite``) and a local receiver (a threaded HTTP server). Creates ``--subscriptions`` rest-hook
subscriptions, one per patient, ``Observation?code=<MRD>&patient=Patient/<p>`` with the resource as
payload, then posts ``--results`` MRD Observations (the pedall-mrd example, spread over the
patients) as transaction Bundles of ``--per-bundle``, one commit each, as a laboratory feed would.
Reports notification latency from commit (the Observation's ``meta.lastUpdated``, stamped in the
writing transaction) to receipt, p50/p95/p99, and the share delivered. Target (issue 6): p99 <= 1 s,
100 % delivered.

The baseline, measured in the same run on the same posts, is an EHR without subscriptions polling
``Observation?code=<MRD>&_lastUpdated=gt<last seen>`` once a second: its latency is from commit to
the poll that first returns the result.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
from pgdb import throwaway_database  # noqa: E402

MRD = "https://w3id.org/pedall-fhir/CodeSystem/observation-code|mrd"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _epoch(instant: str) -> float:
    return datetime.fromisoformat(instant).timestamp()


class Receiver:
    """Records (resource id, lastUpdated, receipt wall-clock time) of each notification."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str, float]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_PUT(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                at = time.time()
                with outer.lock:
                    outer.got.append((body["id"], body["meta"]["lastUpdated"], at))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def pct(xs: list[float]) -> str:
    if not xs:
        return "no samples"
    q = statistics.quantiles(xs, n=100, method="inclusive")
    return f"p50 {q[49] * 1000:,.0f} ms, p95 {q[94] * 1000:,.0f} ms, p99 {q[98] * 1000:,.0f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=int, default=10_000)
    ap.add_argument("--subscriptions", type=int, default=100)
    ap.add_argument("--per-bundle", type=int, default=10)
    ap.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    ap.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    template = json.loads((ROOT / "profiles" / "examples" / "pedall-mrd-1.json").read_text())
    with tempfile.TemporaryDirectory() as d, (
            nullcontext(f"sqlite:///{d}/subs.sqlite3") if args.sqlite
            else throwaway_database(args.postgres, "bench_subs")) as url:
        rx = Receiver()
        port = _free_port()
        env = {**os.environ, "ADAPTER_DATABASE_URL": url, "ADAPTER_EXPORT_DIR": f"{d}/exports"}
        proc = subprocess.Popen([sys.executable, "-m", "adapter", "serve", "--port", str(port)], env=env, cwd=ROOT,  # noqa: S603
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            c = httpx.Client(base_url=base, timeout=60)
            for _ in range(300):
                try:
                    if c.get("/metadata").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            patients = [f"bench-{k}" for k in range(args.subscriptions)]
            for p in patients:
                r = c.post("/Subscription", json={
                    "resourceType": "Subscription", "status": "requested", "reason": "bench",
                    "criteria": f"Observation?code={MRD}&patient=Patient/{p}",
                    "channel": {"type": "rest-hook", "endpoint": f"http://127.0.0.1:{rx.port}/fhir",
                                "payload": "application/fhir+json"}})
                assert r.status_code == 201, r.text

            polled: dict[str, float] = {}
            stop = threading.Event()

            def poll() -> None:  # the baseline: an EHR polling once a second
                since = "1970-01-01T00:00:00+00:00"
                with httpx.Client(base_url=base, timeout=60) as pc:
                    while not stop.is_set():
                        t0 = time.monotonic()
                        params = {"code": MRD, "_lastUpdated": f"gt{since}", "_count": "1000", "_sort": "_lastUpdated"}
                        url: str | None = "/Observation"
                        while url:
                            b = pc.get(url, params=params if url == "/Observation" else None).json()
                            now = time.time()
                            for e in b.get("entry", []):
                                r = e["resource"]
                                polled.setdefault(r["id"], now - _epoch(r["meta"]["lastUpdated"]))
                                since = max(since, r["meta"]["lastUpdated"])
                            url = next((link["url"] for link in b.get("link", []) if link["relation"] == "next"), None)
                        stop.wait(max(0.0, 1.0 - (time.monotonic() - t0)))

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            t0 = time.monotonic()
            for start in range(0, args.results, args.per_bundle):
                entries = []
                for i in range(start, min(start + args.per_bundle, args.results)):
                    o = copy.deepcopy(template)
                    o["id"] = f"bench-obs-{i}"
                    o["subject"] = {"reference": f"Patient/{patients[i % len(patients)]}"}
                    o["contained"][0]["subject"] = o["subject"]
                    o["identifier"][0]["value"] = f"LAB-{i}"
                    o["valueQuantity"]["value"] = round(0.001 * (i % 500), 3)
                    entries.append({"resource": o, "request": {"method": "PUT", "url": f"Observation/{o['id']}"}})
                r = c.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
                assert r.status_code == 200, r.text[:300]
            posting = time.monotonic() - t0
            deadline = time.monotonic() + 120
            while len({g[0] for g in rx.got}) < args.results and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.5)
            stop.set()
            poller.join(10)
            firsts: dict[str, float] = {}
            for rid, stamp, at in rx.got:
                firsts.setdefault(rid, at - _epoch(stamp))
            delivered = len(firsts)
            print(f"{args.results:,} MRD results in {args.results // args.per_bundle:,} transactions "
                  f"({args.results / posting:,.0f} results/s posted), {args.subscriptions} subscriptions, "
                  f"{'SQLite' if args.sqlite else 'PostgreSQL'}")
            print(f"  rest-hook subscriptions: delivered {delivered:,} of {args.results:,} "
                  f"({100 * delivered / args.results:.1f} %), {len(rx.got) - delivered} duplicate(s); latency {pct(list(firsts.values()))}")
            print(f"  baseline, polling every 1 s: seen {len(polled):,}; latency {pct(list(polled.values()))}")
            print("  target: p99 <= 1 s, 100 % delivered")
            c.close()
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
