"""HL7 v2 over MLLP (issue 21): a real listener on loopback, a real MLLP client (framing by hand on
a socket, and python-hl7's asyncio streams), both backends.

The feeds of examples/uk_infants and examples/mx_multicentro/CDMX-B, sent message by message, give
the same resources and figures as ``adapter ingest`` of the files; resends change nothing; bad
messages get AE/AR and are kept as dead letters; the listener survives broken clients; and a
listener killed with SIGKILL while a sender streams 1,000 messages loses and duplicates none.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import hl7
import pytest
from sqlalchemy import func, select

from adapter.config import ROOT, Settings
from adapter.ingest import ingest_file
from adapter.mllp.listener import Listener, ListenerConfig, Metrics
from adapter.outcomes.report import outcomes_report
from adapter.readers.hl7v2 import split_messages
from adapter.store import Store, dead_letters
from adapter.store.schema import resource_history, resources
from tests.conftest import EXAMPLES, _store_on

UK = EXAMPLES / "uk_infants"
CDMX_B = EXAMPLES / "mx_multicentro" / "CDMX-B"
UK_FEED = split_messages((UK / "uk_mrd_lab_ORU_R01.hl7").read_bytes())
CDMX_FEED = split_messages((CDMX_B / "ERM_CDMX-B_ORU_R01.hl7").read_bytes())


# ------------------------------------------------------------------------------------------ helpers

class Sender:
    """A blocking MLLP client: frames a message (0x0B ... 0x1C 0x0D), reads the ACK frame whole."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None, timeout: float = 30) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = tls.wrap_socket(sock, server_hostname="localhost") if tls else sock
        self.buffer = b""

    def send(self, message: bytes) -> bytes:
        self.sock.sendall(b"\x0b" + message + b"\x1c\r")
        return self.ack()

    def ack(self) -> bytes:
        while b"\x1c\r" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the listener")
            self.buffer += chunk
        frame, self.buffer = self.buffer.split(b"\x1c\r", 1)
        assert frame.startswith(b"\x0b"), frame[:20]
        return frame[1:]

    def close(self) -> None:
        self.sock.close()


def msa(ack: bytes) -> tuple[str, str]:
    """(MSA-1, MSA-2) of an ACK."""
    m = hl7.parse(ack.decode())
    return str(m.segment("MSA")[1]), str(m.segment("MSA")[2])


def accessions(store: Store) -> set[str]:
    """The identifier (OBR-3, the filler order number) of every stored result Observation."""
    return {o["identifier"][0]["value"] for o in store.iter_resources("Observation") if o.get("identifier")}


def errs(ack: bytes) -> list[str]:
    return [str(s) for s in hl7.parse(ack.decode()) if str(s[0]) == "ERR"]


@contextmanager
def listening(store: Store, settings: Settings, site: str, mapping: str, **config: Any) -> Iterator[Listener]:
    """A listener on a free loopback port, served by an event loop in a thread."""
    loop = asyncio.new_event_loop()
    listener = Listener(ListenerConfig(site, mapping, port=0, **config), store, settings, metrics=Metrics())
    loop.run_until_complete(listener.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        asyncio.run_coroutine_threadsafe(listener.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def _without_meta(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k != "meta"}


def _content(store: Store) -> dict[tuple[str, str], dict[str, Any]]:
    """Every current resource but Provenance (which names the file or message it came from)."""
    return {(r["resourceType"], r["id"]): _without_meta(r) for r in store.iter_resources()
            if r["resourceType"] != "Provenance"}


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def uk_store(backend: str, tmp_path: Path, settings: Settings) -> Iterator[Store]:
    """A store holding the uk-infants registry (the feed's results link to its Patients)."""
    with _store_on(backend, tmp_path) as store:
        assert ingest_file(UK / "uk_infant_blinatumomab_registry.csv", "uk-infants", "registry", store,
                           settings=settings).rows_rejected == 0
        yield store


# -------------------------------------------------------------------------------------- the feeds

def test_the_feeds_sent_message_by_message_equal_ingest_of_the_files(backend: str, tmp_path: Path,
                                                                       settings: Settings) -> None:
    """uk-infants and cdmx-b: the same resources (ids and content) and the same figures, per site;
    every message AA with MSA-2 = its MSH-10; then every message resent: AA again, and not one
    new version anywhere."""
    feeds = [("uk-infants", "mrd_lab", UK_FEED, [("registry", UK / "uk_infant_blinatumomab_registry.csv")], []),
             ("cdmx-b", "lab_erm", CDMX_FEED, [], [("eventos", CDMX_B / "eventos_clinicos_CDMX-B.csv")])]
    (tmp_path / "files").mkdir()
    (tmp_path / "mllp").mkdir()
    with _store_on(backend, tmp_path / "files") as by_file, _store_on(backend, tmp_path / "mllp") as by_mllp:
        for site, mapping, feed, before, after in feeds:
            path = UK / "uk_mrd_lab_ORU_R01.hl7" if site == "uk-infants" else CDMX_B / "ERM_CDMX-B_ORU_R01.hl7"
            for name, file in before:
                for store in (by_file, by_mllp):
                    ingest_file(file, site, name, store, settings=settings)
            assert ingest_file(path, site, mapping, by_file, settings=settings).rows_rejected == 0
            with listening(by_mllp, settings, site, mapping) as listener:
                sender = Sender(listener.port)
                for raw in feed:
                    code, control = msa(sender.send(raw))
                    assert (code, control) == ("AA", str(hl7.parse(raw.decode()).segment("MSH")[10]))
                sender.close()
            for name, file in after:
                for store in (by_file, by_mllp):
                    ingest_file(file, site, name, store, settings=settings)
        assert _content(by_mllp) == _content(by_file)
        n_obs = sum(1 for k in _content(by_mllp) if k[0] == "Observation")
        assert n_obs >= len(UK_FEED) + len(CDMX_FEED)
        for site in ("uk-infants", "cdmx-b"):
            assert outcomes_report(by_mllp.cohort(site)) == outcomes_report(by_file.cohort(site))
        versions = by_mllp.version_total()
        for site, mapping, feed, _, _ in feeds:
            with listening(by_mllp, settings, site, mapping) as listener:
                sender = Sender(listener.port)
                assert {msa(sender.send(raw))[0] for raw in feed} == {"AA"}
                sender.close()
        assert by_mllp.version_total() == versions
        assert dead_letters.letters(by_mllp) == []


def test_the_ack_follows_hl7_v2_5(uk_store: Store, settings: Settings) -> None:
    """MSH-3/4 and MSH-5/6 swapped, MSH-9 ACK^R01^ACK, a new MSH-10, MSH-12 copied, MSA-2 = MSH-10."""
    with listening(uk_store, settings, "uk-infants", "mrd_lab") as listener:
        sender = Sender(listener.port)
        ack = hl7.parse(sender.send(UK_FEED[0]).decode())
        sender.close()
    msg = hl7.parse(UK_FEED[0].decode())
    a, m = ack.segment("MSH"), msg.segment("MSH")
    assert (str(a[3]), str(a[4]), str(a[5]), str(a[6])) == (str(m[5]), str(m[6]), str(m[3]), str(m[4]))
    assert str(a[9]) == "ACK^R01^ACK" and str(a[10]) != str(m[10]) and str(a[12]) == str(m[12])
    assert (str(ack.segment("MSA")[1]), str(ack.segment("MSA")[2])) == ("AA", str(m[10]))


def test_msh_15_is_honoured(uk_store: Store, settings: Settings) -> None:
    """NE: stored, no ACK; ER: no ACK on success, an ACK on an error; SU: an ACK on success."""
    def with_msh15(raw: bytes, value: str, control: str) -> bytes:
        seg = raw.split(b"\r")
        f = seg[0].split(b"|")
        f[9], f[14] = control.encode(), value.encode()
        return b"\r".join([b"|".join(f), *seg[1:]])

    with listening(uk_store, settings, "uk-infants", "mrd_lab") as listener:
        sender = Sender(listener.port, timeout=5)
        sender.sock.sendall(b"\x0b" + with_msh15(UK_FEED[0], "NE", "NE-1") + b"\x1c\r")
        sender.sock.sendall(b"\x0b" + with_msh15(UK_FEED[1], "ER", "ER-1") + b"\x1c\r")
        bad = with_msh15(UK_FEED[2], "ER", "ER-2").replace(b"1 x 10-3", b"lots")
        # the only ACK of the three is the error's: the first two were stored in silence
        assert msa(sender.send(bad)) == ("AE", "ER-2")
        assert msa(sender.send(with_msh15(UK_FEED[3], "SU", "SU-1"))) == ("AA", "SU-1")
        sender.close()
    stored = accessions(uk_store)
    obr3 = [str(hl7.parse(r.decode()).segment("OBR")[3]) for r in UK_FEED[:4]]
    assert {obr3[0], obr3[1], obr3[3]} <= stored and obr3[2] not in stored


# ---------------------------------------------------------------------------- errors, dead letters

def test_a_row_issue_is_AE_with_ERR_kept_and_replayable(backend: str, tmp_path: Path, settings: Settings,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A time point the site's code table lacks: AE, one ERR naming OBR-13 (segment, sequence,
    field) and the reason; nothing of the message stored; kept as a dead letter (listed without
    the message's content). Once the table has the entry, ``adapter dead-letters replay`` stores
    it (exit 0) and marks it replayed; a replay that still fails exits 9."""
    from typer.testing import CliRunner

    from adapter.cli import app as cli
    from adapter.config import get_settings

    mappings = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mappings)
    table = mappings / "uk-infants" / "tables" / "mrd_timepoint.yaml"
    full = table.read_text()
    table.write_text("\n".join(line for line in full.splitlines() if not line.startswith("  Pre-blinatumomab")) + "\n")
    local = settings.model_copy(update={"mappings_dir": mappings})
    with _store_on(backend, tmp_path) as store:
        ingest_file(UK / "uk_infant_blinatumomab_registry.csv", "uk-infants", "registry", store, settings=local)
        raw = UK_FEED[0]
        with listening(store, local, "uk-infants", "mrd_lab") as listener:
            sender = Sender(listener.port)
            ack = sender.send(raw)
            assert msa(sender.send(UK_FEED[1])) == ("AA", "MRD161228002")  # the connection goes on
            sender.close()
        assert msa(ack) == ("AE", "MRD161127001")
        (err,) = errs(ack)
        f = err.split("|")
        assert f[2] == "OBR^1^13" and f[3].startswith("103^") and f[4] == "E" and "Pre-blinatumomab" in f[8]
        obr3 = str(hl7.parse(raw.decode()).segment("OBR")[3])
        assert obr3 not in accessions(store)
        (letter,) = dead_letters.letters(store)
        assert (letter.ack_code, letter.control_id, letter.message) == ("AE", "MRD161127001", raw)
        assert "KHAN" not in str(letter.listing())

        monkeypatch.setenv("ADAPTER_DATABASE_URL", store.url)
        monkeypatch.setenv("ADAPTER_MAPPINGS_DIR", str(mappings))
        monkeypatch.setenv("ADAPTER_ID_KEY", settings.id_key)
        get_settings.cache_clear()
        try:
            out = CliRunner().invoke(cli, ["dead-letters", "list", "--json"])
            assert out.exit_code == 0 and letter.id in out.stdout and "KHAN" not in out.stdout
            assert CliRunner().invoke(cli, ["dead-letters", "replay"]).exit_code == 9  # still failing
            table.write_text(full)
            out = CliRunner().invoke(cli, ["dead-letters", "replay", letter.id])
            assert out.exit_code == 0, out.stdout
        finally:
            get_settings.cache_clear()
        assert dead_letters.letters(store) == []
        assert dead_letters.letter(store, letter.id).replayed is not None  # type: ignore[union-attr]
        assert obr3 in accessions(store)


def test_garbage_and_other_sites_get_AR_and_the_listener_survives(uk_store: Store, settings: Settings) -> None:
    """Garbage in a frame: AR (kept); bytes outside a frame: AR; a message for another site (MSH-5
    not the registry): AR naming the field; a non-result message: AR 200; a client that disconnects
    mid-frame, and one whose message is over the size limit (AR, connection closed): the listener
    goes on serving."""
    with listening(uk_store, settings, "uk-infants", "mrd_lab", max_message_bytes=4096) as listener:
        s = Sender(listener.port)
        assert msa(s.send(b"this is not HL7"))[0] == "AR"
        s.sock.sendall(b"stray bytes\x1c\r")
        assert msa(s.ack())[0] == "AR"
        other = UK_FEED[0].replace(b"INFANT_BLINA_REG", b"OTHER_REGISTRY")
        ack = s.send(other)
        assert msa(ack) == ("AR", "MRD161127001") and errs(ack)[0].split("|")[2] == "MSH^1^5^^1"
        adt = UK_FEED[0].replace(b"ORU^R01^ORU_R01", b"ADT^A01^ADT_A01")
        ack = s.send(adt)
        assert msa(ack)[0] == "AR" and errs(ack)[0].split("|")[3].startswith("200^")
        s.close()

        half = Sender(listener.port)
        half.sock.sendall(b"\x0b" + UK_FEED[1][: len(UK_FEED[1]) // 2])
        half.close()
        big = Sender(listener.port)
        big.sock.sendall(b"\x0b" + b"OBX|" * 2000 + b"\x1c\r")
        assert msa(big.ack())[0] == "AR"
        with pytest.raises(ConnectionError):
            big.ack()

        s = Sender(listener.port)
        assert msa(s.send(UK_FEED[1]))[0] == "AA"  # the half-sent message was never stored or ACKed
        s.close()
    kept = {(d.ack_code, d.control_id) for d in dead_letters.letters(uk_store)}
    assert ("AR", "MRD161127001") in kept and ("AR", None) in kept


def test_a_correction_versions_the_observation(uk_store: Store, settings: Settings) -> None:
    """OBX-11 C after the original: version 2, status corrected, as from a file."""
    original = UK_FEED[0]
    corrected = original.replace(b"|MRD161127001|", b"|MRD161127001C|").replace(b"2 x 10-3", b"3 x 10-3")
    corrected = corrected.replace(b"|||F|||201611180900", b"|||C|||201611180900")
    with listening(uk_store, settings, "uk-infants", "mrd_lab") as listener:
        s = Sender(listener.port)
        assert msa(s.send(original))[0] == "AA" and msa(s.send(corrected))[0] == "AA"
        assert msa(s.send(original))[0] == "AA"  # the original resent late does not undo the correction
        s.close()
    obr3 = str(hl7.parse(original.decode()).segment("OBR")[3])
    (obs,) = [o for o in uk_store.iter_resources("Observation") if o.get("identifier") and o["identifier"][0]["value"] == obr3]
    assert obs["status"] == "corrected" and obs["meta"]["versionId"] == "2"


# -------------------------------------------------------------------------------------- operations

def test_allow_list_connection_limit_and_metrics(uk_store: Store, settings: Settings) -> None:
    import ipaddress

    with listening(uk_store, settings, "uk-infants", "mrd_lab",
                   allow=[ipaddress.ip_network("10.0.0.0/8")]) as listener:
        s = Sender(listener.port, timeout=5)
        with pytest.raises(ConnectionError):
            s.send(UK_FEED[0])
        assert listener.metrics.refused.labels("uk-infants", "not-allowed")._value.get() == 1
    with listening(uk_store, settings, "uk-infants", "mrd_lab", max_connections=1) as listener:
        first = Sender(listener.port)
        assert msa(first.send(UK_FEED[0]))[0] == "AA"
        second = Sender(listener.port, timeout=5)
        with pytest.raises(ConnectionError):
            second.send(UK_FEED[1])
        assert msa(first.send(UK_FEED[1]))[0] == "AA"
        assert msa(first.send(b"junk"))[0] == "AR"
        first.close()
        reg = listener.metrics.registry
        assert reg.get_sample_value("adapter_mllp_messages_total", {"site": "uk-infants", "ack": "AA"}) == 2
        assert reg.get_sample_value("adapter_mllp_messages_total", {"site": "uk-infants", "ack": "AR"}) == 1
        assert reg.get_sample_value("adapter_mllp_ack_seconds_count", {"site": "uk-infants"}) == 3
        assert reg.get_sample_value("adapter_mllp_connections_refused_total", {"site": "uk-infants", "reason": "limit"}) == 1


def test_idle_connections_are_closed(uk_store: Store, settings: Settings) -> None:
    with listening(uk_store, settings, "uk-infants", "mrd_lab", idle_timeout_seconds=0.5) as listener:
        s = Sender(listener.port, timeout=10)
        assert msa(s.send(UK_FEED[0]))[0] == "AA"
        time.sleep(1.5)
        with pytest.raises((ConnectionError, OSError)):
            s.send(UK_FEED[1])


def test_tls(uk_store: Store, settings: Settings, tmp_path: Path) -> None:
    """MLLP over TLS (stdlib ssl) with a self-signed certificate the client trusts."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    from adapter.mllp.listener import config_from_settings

    cfg = config_from_settings(settings.model_copy(update={"mllp_tls_cert": str(tmp_path / "cert.pem"),
                                                            "mllp_tls_key": str(tmp_path / "key.pem")}),
                               "uk-infants", "mrd_lab")
    with listening(uk_store, settings, "uk-infants", "mrd_lab", tls=cfg.tls) as listener:
        client = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        s = Sender(listener.port, tls=client)
        assert msa(s.send(UK_FEED[0])) == ("AA", "MRD161127001")
        s.close()
        plain = Sender(listener.port, timeout=5)  # a plain-TCP client gets no ACK
        with pytest.raises((ConnectionError, OSError)):
            plain.send(UK_FEED[1])


def test_production_requires_an_allow_list(settings: Settings) -> None:
    from adapter.errors import ConfigError
    from adapter.mllp.listener import config_from_settings

    prod = settings.model_copy(update={"env": "production"})
    with pytest.raises(ConfigError, match="ADAPTER_MLLP_ALLOW"):
        config_from_settings(prod, "uk-infants", "mrd_lab")
    cfg = config_from_settings(prod.model_copy(update={"mllp_allow": "10.1.0.0/16, 192.168.1.7"}), "uk-infants", "mrd_lab")
    assert [str(n) for n in cfg.allow or []] == ["10.1.0.0/16", "192.168.1.7/32"]


def test_logs_name_no_patient(uk_store: Store, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """Per-connection and per-message lines, with MSH-10 and ACK codes, never a name, an NHS
    number or a hospital number, even for a rejected message."""
    caplog.set_level("INFO", logger="adapter.mllp")
    with listening(uk_store, settings, "uk-infants", "mrd_lab") as listener:
        s = Sender(listener.port)
        for raw in UK_FEED[:6]:
            s.send(raw)
        s.send(UK_FEED[6].replace(b"x 10-", b"y 10-"))
        s.close()
        time.sleep(0.2)
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records if r.name == "adapter.mllp")
    assert "mllp connection opened" in text and "mllp message" in text and "'ack': 'AE'" in text
    for raw in UK_FEED[:7]:
        pid = hl7.parse(raw.decode()).segment("PID")
        for rep in pid[3]:
            assert str(rep[0]) not in text
        assert str(pid[5][0][0]) not in text  # family name


# --------------------------------------------------------------------------------- SIGKILL, resend

def _feed_of(n: int, folder: Path) -> tuple[list[bytes], Path]:
    """``n`` distinct messages (the uk feed repeated as new cohorts, as bench/ingest.py makes them)
    and the registry CSV for their patients."""
    sys.path.insert(0, str(ROOT / "bench"))
    from ingest import make_hl7, make_registry  # type: ignore[import-not-found]

    cohorts = make_hl7(n, folder / "feed.hl7")
    make_registry(cohorts, folder / "registry.csv")
    return split_messages((folder / "feed.hl7").read_bytes()), folder / "registry.csv"


def _start(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "adapter", "mllp", "--site", "uk-infants", "--mapping", "mrd_lab",
                             "--port", str(port)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            assert proc.poll() is None, "the listener exited"
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("the listener did not start")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigkill_while_streaming_loses_and_duplicates_nothing(backend: str, tmp_path: Path, settings: Settings) -> None:
    """A sender streams 1,000 messages; the listener process is killed with SIGKILL mid-stream.
    Every message ACKed before the kill is in the store (none was ACKed before its commit). After a
    restart the sender resends everything it has no ACK for: all AA, and every message is stored
    exactly once (one Observation per message, each at version 1 with one history row)."""
    messages, registry = _feed_of(1000, tmp_path)
    (tmp_path / "db").mkdir()
    with _store_on(backend, tmp_path / "db") as store:
        assert ingest_file(registry, "uk-infants", "registry", store, settings=settings).rows_rejected == 0
        env = {**os.environ, "ADAPTER_DATABASE_URL": store.url, "ADAPTER_ID_KEY": settings.id_key,
               "ADAPTER_AUDIT_SPOOL_DIR": str(tmp_path / "spool")}
        port = _free_port()
        proc = _start(env, port)
        acked: set[int] = set()
        obr3 = [str(hl7.parse(m.decode()).segment("OBR")[3]) for m in messages]
        sender = Sender(port)
        kill_at = 300
        try:
            for i, raw in enumerate(messages):
                if i == kill_at:  # the next message is on the wire when the process dies
                    sender.sock.sendall(b"\x0b" + raw + b"\x1c\r")
                    time.sleep(0.003)
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(30)
                    break
                assert msa(sender.send(raw))[0] == "AA"
                acked.add(i)
                if i % 10 == 0:  # at the moment of its ACK, the result is already committed
                    with store.engine.connect() as conn:
                        assert conn.execute(select(func.count()).select_from(resources).where(
                            resources.c.type == "Observation",
                            resources.c.resource.like(f'%"value":"{obr3[i]}"%'))).scalar() == 1, i
        finally:
            sender.close()
            if proc.poll() is None:  # a failed assertion above: never leave the listener running
                proc.kill()
                proc.wait(30)
        assert len(acked) == kill_at
        stored = accessions(store)
        assert {obr3[i] for i in acked} <= stored  # nothing ACKed before it was stored

        proc = _start(env, port)
        try:
            sender = Sender(port)
            for i, raw in enumerate(messages):
                if i not in acked:
                    assert msa(sender.send(raw))[0] == "AA"
            sender.close()
        finally:
            proc.kill()
            proc.wait(30)
        wanted = set(obr3)
        mrd = [o for o in store.iter_resources("Observation") if o.get("identifier")
               and o["identifier"][0]["value"] in wanted]
        assert sorted(o["identifier"][0]["value"] for o in mrd) == sorted(obr3)  # each once
        ids = [o["id"] for o in mrd]
        with store.engine.connect() as conn:
            versions = {v for (v,) in conn.execute(select(resources.c.version_id).where(
                resources.c.type == "Observation", resources.c.id.in_(ids)))}
            history = conn.execute(select(func.count()).select_from(resource_history).where(
                resource_history.c.type == "Observation", resource_history.c.id.in_(ids))).scalar()
        assert versions == {1} and history == len(ids) == 1000


def test_the_listener_inside_adapter_serve(tmp_path: Path, settings: Settings) -> None:
    """ADAPTER_MLLP_SITE/MAPPING: ``adapter serve`` also listens for MLLP; a message ACKed AA is
    readable through the REST API at once, and the listener's metrics are on ``/metrics``."""
    import httpx

    store = Store(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    store.migrate()
    ingest_file(UK / "uk_infant_blinatumomab_registry.csv", "uk-infants", "registry", store, settings=settings)
    store.engine.dispose()
    http, mllp = _free_port(), _free_port()
    env = {**os.environ, "ADAPTER_DATABASE_URL": store.url, "ADAPTER_ID_KEY": settings.id_key,
           "ADAPTER_AUDIT_SPOOL_DIR": str(tmp_path / "spool"), "ADAPTER_EXPORT_DIR": str(tmp_path / "exports"),
           "ADAPTER_MLLP_SITE": "uk-infants", "ADAPTER_MLLP_MAPPING": "mrd_lab", "ADAPTER_MLLP_PORT": str(mllp)}
    proc = subprocess.Popen([sys.executable, "-m", "adapter", "serve", "--port", str(http)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{http}/health/live", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "adapter serve did not start"
            time.sleep(0.3)
        s = Sender(mllp)
        assert msa(s.send(UK_FEED[0])) == ("AA", "MRD161127001")
        s.close()
        obr3 = str(hl7.parse(UK_FEED[0].decode()).segment("OBR")[3])
        bundle = httpx.get(f"http://127.0.0.1:{http}/Observation", params={"identifier": obr3}, timeout=30).json()
        assert bundle["total"] == 1
        metrics = httpx.get(f"http://127.0.0.1:{http}/metrics", timeout=30).text
        assert 'adapter_mllp_messages_total{ack="AA",site="uk-infants"} 1.0' in metrics
    finally:
        proc.terminate()
        proc.wait(30)


def test_python_hl7_clients_interoperate(uk_store: Store, settings: Settings) -> None:
    """python-hl7's blocking MLLPClient and its asyncio streams (what other Python integrations use)
    get their ACKs like the hand-framed client above."""
    from hl7.client import MLLPClient
    from hl7.mllp import open_hl7_connection

    with listening(uk_store, settings, "uk-infants", "mrd_lab") as listener:
        with MLLPClient("127.0.0.1", listener.port) as client:
            ack = client.send_message(UK_FEED[0])
        assert ack.startswith(b"\x0b") and ack.endswith(b"\x1c\r")
        assert msa(ack[1:-2]) == ("AA", "MRD161127001")

        async def stream() -> list[str]:
            reader, writer = await open_hl7_connection("127.0.0.1", listener.port, encoding="utf-8")
            out = []
            for raw in UK_FEED[1:4]:
                writer.writemessage(hl7.parse(raw.decode()))
                await writer.drain()
                out.append(str((await reader.readmessage()).segment("MSA")[1]))
            writer.close()
            await writer.wait_closed()
            return out

        assert asyncio.run(stream()) == ["AA", "AA", "AA"]


def test_concurrent_senders_on_two_listeners_store_each_message_once(uk_store: Store, settings: Settings) -> None:
    """Two listeners on one store (``adapter serve`` and ``adapter mllp`` side by side), two senders
    each, all sending the whole uk feed at once: every ACK is AA (no AR from a lost race), and each
    result is stored once, at version 1."""
    from concurrent.futures import ThreadPoolExecutor

    with listening(uk_store, settings, "uk-infants", "mrd_lab") as one, \
            listening(uk_store, settings, "uk-infants", "mrd_lab") as two:
        def stream(port: int) -> set[str]:
            s = Sender(port, timeout=120)
            try:
                return {msa(s.send(raw))[0] for raw in UK_FEED}
            finally:
                s.close()

        with ThreadPoolExecutor(4) as pool:
            codes = set().union(*pool.map(stream, [one.port, two.port, one.port, two.port]))
    assert codes == {"AA"}
    obr3 = {str(hl7.parse(r.decode()).segment("OBR")[3]) for r in UK_FEED}
    results = [o for o in uk_store.iter_resources("Observation") if o.get("identifier")
               and o["identifier"][0]["value"] in obr3]
    assert len(results) == len(obr3)
    assert {o["meta"]["versionId"] for o in results} == {"1"}
