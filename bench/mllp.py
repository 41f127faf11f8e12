"""MLLP listener benchmark (a documented command, not a test).

    .venv/bin/python bench/mllp.py [--messages 2000] [--rate 100] [--postgres URL]

Messages: the uk_infants MRD feed repeated as new cohorts (bench/ingest.py ``make_hl7``), with the
registry of their patients ingested first, untimed. The listener runs as its own process
(``adapter mllp``, SQLite file store; ``--postgres`` adds a run on PostgreSQL), and each sender is
a blocking MLLP client on loopback that sends a message and waits for its ACK (MLLP allows one
message in flight per connection). Latency is receipt-to-ACK as the sender sees it: from the
first byte written to the ACK's last byte read.

1. paced: one sender at ``--rate`` messages/s (each message sent at its scheduled time, or at
   once when late), p50/p99/max latency; target p99 <= 50 ms at 100 messages/s on SQLite;
2. flat out: 1 sender, then 4 concurrent senders (disjoint messages): messages/s, p50/p99;
3. baseline, in the same run: ``adapter ingest`` of the same messages as one file (messages/s).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import make_hl7, make_registry  # noqa: E402
from pgdb import throwaway_database  # noqa: E402

from adapter.config import Settings  # noqa: E402
from adapter.ingest import ingest_file  # noqa: E402
from adapter.readers.hl7v2 import split_messages  # noqa: E402
from adapter.store import Store  # noqa: E402

KEY = "bench-mllp"


def _send(sock: socket.socket, message: bytes, buf: bytearray) -> bytes:
    sock.sendall(b"\x0b" + message + b"\x1c\r")
    while b"\x1c\r" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the listener closed the connection")
        buf.extend(chunk)
    end = buf.index(b"\x1c\r")
    ack = bytes(buf[1:end])
    del buf[:end + 2]
    if b"MSA|AA|" not in ack:
        raise AssertionError(f"not AA: {ack[:200]!r}")
    return ack


def sender(port: int, messages: list[bytes], rate: float | None, out: list[float]) -> None:
    """Send ``messages`` on one connection; append each latency (s) to ``out``."""
    sock = socket.create_connection(("127.0.0.1", port))
    buf = bytearray()
    start = time.perf_counter()
    for i, m in enumerate(messages):
        if rate:
            due = start + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        t = time.perf_counter()
        _send(sock, m, buf)
        out.append(time.perf_counter() - t)
    sock.close()


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listener(url: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ADAPTER_DATABASE_URL": url, "ADAPTER_ID_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "adapter", "mllp", "--site", "uk-infants", "--mapping", "mrd_lab",
                             "--port", str(port)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("adapter mllp exited") from None
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("adapter mllp did not start")


def _fresh(url: str, registry: Path, settings: Settings) -> None:
    store = Store(url)
    store.migrate()
    assert ingest_file(registry, "uk-infants", "registry", store, settings=settings).rows_rejected == 0
    store.engine.dispose()


def run_backend(name: str, make_url: object, msgs: list[bytes], registry: Path, rate: float, settings: Settings) -> None:
    print(f"{name}:")
    n = len(msgs)
    parts = [("paced", msgs[: n // 2], 1, rate), ("flat out, 1 sender", msgs[n // 2: 3 * n // 4], 1, None),
             ("flat out, 4 senders", msgs[3 * n // 4:], 4, None)]
    url = make_url()  # type: ignore[operator]
    _fresh(url, registry, settings)
    port = _free_port()
    proc = listener(url, port)
    try:
        for label, part, k, r in parts:
            lat: list[float] = []
            chunks = [part[i::k] for i in range(k)]
            threads = [threading.Thread(target=sender, args=(port, c, r, lat)) for c in chunks]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            dt = time.perf_counter() - t
            print(f"  {label:<20} {len(part):>5} msgs  {len(part) / dt:7.0f} msg/s   latency p50 {1000 * statistics.median(lat):6.1f} ms"
                  f"  p99 {1000 * _pct(lat, 99):6.1f} ms  max {1000 * max(lat):6.1f} ms"
                  + (f"   (target at {r:g} msg/s: p99 <= 50 ms)" if r else ""))
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=100.0, help="messages/s of the paced run")
    ap.add_argument("--postgres", default=None, help="also run on PostgreSQL (a throwaway database at this URL)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        feed = Path(d) / "feed.hl7"
        cohorts = make_hl7(args.messages, feed)
        registry = make_registry(cohorts, Path(d) / "registry.csv")
        msgs = split_messages(feed.read_bytes())
        settings = Settings(database_url=f"sqlite:///{d}/unused.sqlite3", id_key=KEY)
        print(f"HL7 v2 ORU^R01 over MLLP (uk-infants/mrd_lab), {len(msgs):,} messages, {cohorts * 11:,} registry patients")
        base_url = f"sqlite:///{d}/baseline.sqlite3"
        _fresh(base_url, registry, settings)
        store = Store(base_url)
        t = time.perf_counter()
        rep = ingest_file(feed, "uk-infants", "mrd_lab", store, settings=settings)
        dt = time.perf_counter() - t
        assert rep.rows_rejected == 0
        store.engine.dispose()
        print(f"baseline, adapter ingest of the same messages as one file, SQLite: {len(msgs) / dt:,.0f} msg/s")
        run_backend("SQLite (adapter mllp)", lambda: f"sqlite:///{d}/mllp.sqlite3", msgs, registry, args.rate, settings)
        if args.postgres:
            with throwaway_database(args.postgres) as url:
                run_backend("PostgreSQL (adapter mllp)", lambda: url, msgs, registry, args.rate, settings)


if __name__ == "__main__":
    main()
