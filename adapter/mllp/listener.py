"""The MLLP listener: HL7 v2 messages pushed by a laboratory system over TCP (optionally TLS).

Framing (HL7 v2.5.1 Appendix C, "Minimal Lower Layer Protocol"): each message is sent as
``0x0B <message> 0x1C 0x0D``; python-hl7's ``hl7.mllp`` streams (asyncio) read and write the
blocks. Each connection is served in order: a message is read, stored by
:func:`adapter.mllp.receive.receive` in a worker thread (one database transaction, committed
before its ACK is written), acknowledged, and only then is the next message of that connection
read. So messages of one sender keep their order (a correction after its original), and an ACK
never precedes the commit. Connections are independent; writes of one site are serialised by the
ingestion lock.

Operations: a connection limit (a connection over it is closed at once), an idle timeout, a
maximum message size (a larger one is answered AR and the connection closed, since the framing
is lost), TLS (stdlib ``ssl``, with a certificate and key), an allow-list of peer networks
(required outside development mode), one log line per connection and per message without
patient identifiers, and Prometheus metrics in the listener's own registry: messages by ACK code,
receipt-to-ACK latency, open connections, refused connections.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from hl7.mllp import start_hl7_server
from hl7.mllp.exceptions import InvalidBlockError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from adapter.config import Settings
from adapter.mllp.ack import AckError, build_ack
from adapter.mllp.receive import Receipt, receive
from adapter.store import Store

log = logging.getLogger("adapter.mllp")


@dataclass
class ListenerConfig:
    """Where and how to listen. ``allow``: peer networks (``10.1.0.0/16``, ``127.0.0.1``) that may
    connect; ``None`` allows any peer (development only, enforced by :func:`config_from_settings`).
    ``tls``: a server ``ssl.SSLContext`` or ``None`` for plain TCP."""

    site: str
    mapping: str
    host: str = "127.0.0.1"
    port: int = 2575
    max_connections: int = 16
    idle_timeout_seconds: float = 300.0
    max_message_bytes: int = 1 << 20
    allow: list[Any] | None = None
    tls: ssl.SSLContext | None = field(default=None, repr=False)


def config_from_settings(settings: Settings, site: str, mapping: str, host: str | None = None,
                         port: int | None = None) -> ListenerConfig:
    """The listener's configuration from the ``ADAPTER_MLLP_*`` settings (see
    :class:`adapter.config.Settings`). Raises ConfigError outside development mode when no
    allow-list is set, for an invalid network, or when only one of certificate and key is given."""
    from adapter.errors import ConfigError

    allow = None
    if settings.mllp_allow:
        try:
            allow = [ipaddress.ip_network(n.strip(), strict=False) for n in settings.mllp_allow.split(",") if n.strip()]
        except ValueError as exc:
            raise ConfigError(f"ADAPTER_MLLP_ALLOW: {exc}") from None
    elif settings.env != "development":
        raise ConfigError("ADAPTER_MLLP_ALLOW (the peer networks that may connect) is required outside development mode")
    tls = None
    if bool(settings.mllp_tls_cert) != bool(settings.mllp_tls_key):
        raise ConfigError("ADAPTER_MLLP_TLS_CERT and ADAPTER_MLLP_TLS_KEY go together")
    if settings.mllp_tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            tls.load_cert_chain(settings.mllp_tls_cert, settings.mllp_tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the MLLP TLS certificate or key: {exc}") from None
    return ListenerConfig(site, mapping, host or settings.mllp_host, settings.mllp_port if port is None else port,
                          settings.mllp_max_connections, settings.mllp_idle_timeout_seconds,
                          settings.mllp_max_message_bytes, allow, tls)


class Metrics:
    """The listener's Prometheus metrics, in ``registry`` (its own unless one is given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.messages = Counter("adapter_mllp_messages", "HL7 v2 messages received over MLLP, by ACK code (MSA-1)",
                                ["site", "ack"], registry=self.registry)
        self.latency = Histogram("adapter_mllp_ack_seconds", "From a message's last byte received to its ACK handed to the socket",
                                 ["site"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                 registry=self.registry)
        self.connections = Gauge("adapter_mllp_connections", "Open MLLP connections", ["site"], registry=self.registry)
        self.refused = Counter("adapter_mllp_connections_refused",
                               "Connections closed at once: over the limit, or from a peer not allowed",
                               ["site", "reason"], registry=self.registry)


class Listener:
    """One MLLP listener for one site and HL7 v2 mapping (see the module docstring).

    ``await start()`` binds (``port`` 0 picks a free port; :attr:`port` is the bound one);
    ``await close()`` stops accepting and waits for open connections to finish their message."""

    def __init__(self, config: ListenerConfig, store: Store, settings: Settings, validator: Any = None,
                 metrics: Metrics | None = None) -> None:
        from adapter.spec import load_mapping

        self.config, self.store, self.settings, self.validator = config, store, settings, validator
        # loaded once (a bad site or mapping fails here); a changed mapping file applies on restart
        self.loaded = load_mapping(config.site, config.mapping, settings.mappings_dir)
        # the store writes a site's messages one at a time (the ingestion lock): connections queue
        # here, in order of arrival, instead of polling the database lock
        self._serial = threading.Lock()
        if validator is None:  # compiled before the first message, not during it
            from adapter.validation import get_validator
            from adapter.validation.invariants import core_invariants

            self.validator = get_validator()
            core_invariants()
        self.metrics = metrics or Metrics()
        self.port = config.port
        self._server: asyncio.base_events.Server | None = None
        self._active = 0

    async def start(self) -> None:
        self._server = await start_hl7_server(self._client, self.config.host, self.config.port,
                                              limit=self.config.max_message_bytes, ssl=self.config.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("mllp listening", extra={"site": self.config.site, "mapping": self.config.mapping,
                                          "host": self.config.host, "port": self.port, "tls": self.config.tls is not None})

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _allowed(self, host: str) -> bool:
        if self.config.allow is None:
            return True
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in self.config.allow)

    async def _client(self, reader: Any, writer: Any) -> None:
        site = self.config.site
        peer = writer.get_extra_info("peername") or ("?", 0)
        who = f"{peer[0]}:{peer[1]}"
        if not self._allowed(str(peer[0])):
            self.metrics.refused.labels(site, "not-allowed").inc()
            log.warning("mllp connection refused: peer not in the allow-list", extra={"peer": who})
            writer.close()
            return
        if self._active >= self.config.max_connections:
            self.metrics.refused.labels(site, "limit").inc()
            log.warning("mllp connection refused: connection limit reached",
                        extra={"peer": who, "limit": self.config.max_connections})
            writer.close()
            return
        self._active += 1
        self.metrics.connections.labels(site).inc()
        log.info("mllp connection opened", extra={"peer": who})
        count, why = 0, "closed by the peer"
        try:
            while True:
                try:
                    block = await asyncio.wait_for(reader.readblock(), self.config.idle_timeout_seconds)
                except TimeoutError:
                    why = f"idle for {self.config.idle_timeout_seconds:g} s"
                    break
                except asyncio.IncompleteReadError as exc:
                    why = "closed by the peer" + (f" mid-message ({len(exc.partial)} bytes dropped, not acknowledged)"
                                                  if exc.partial.strip() else "")
                    break
                except InvalidBlockError:  # bytes outside a 0x0B ... 0x1C 0x0D frame
                    await self._send(writer, self._reject("data outside an MLLP frame (no start block 0x0B)"), None, time.perf_counter())
                    continue
                except ValueError:  # over the limit: the rest of the frame cannot be found again
                    await self._send(writer, self._reject(f"message larger than {self.config.max_message_bytes} bytes"),
                                     None, time.perf_counter())
                    why = "message too large"
                    break
                except (ConnectionError, OSError):
                    why = "connection reset"
                    break
                received = time.perf_counter()
                count += 1
                try:
                    receipt = await asyncio.to_thread(self._receive, block)
                except Exception as exc:  # noqa: BLE001 - a bug must not take the listener down
                    log.exception("mllp message failed", extra={"peer": who})
                    receipt = self._reject(f"application internal error ({exc.__class__.__name__})")
                if not await self._send(writer, receipt, who, received):
                    why = "connection lost before the ACK was written"
                    break
        finally:
            self._active -= 1
            self.metrics.connections.labels(site).dec()
            log.info("mllp connection closed", extra={"peer": who, "messages": count, "reason": why})
            writer.close()

    def _receive(self, block: bytes) -> Receipt:
        with self._serial:
            return receive(block, self.config.site, self.config.mapping, self.store, settings=self.settings,
                           validator=self.validator, loaded=self.loaded)

    def _reject(self, reason: str) -> Receipt:
        err = AckError(None, None, None, None, 207 if "internal" in reason else 100, reason)
        return Receipt("AR", build_ack(None, "AR", [err], "ADAPTER-AR"), None, [err])

    async def _send(self, writer: Any, receipt: Receipt, who: str | None, received: float) -> bool:
        site = self.config.site
        # counted when the ACK is handed to the socket (so a scrape after the sender has its ACK
        # always includes it)
        self.metrics.messages.labels(site, receipt.ack_code).inc()
        self.metrics.latency.labels(site).observe(time.perf_counter() - received)
        try:
            if receipt.ack is not None:
                writer.writeblock(receipt.ack)
                await writer.drain()
        except (ConnectionError, OSError):
            return False
        log.info("mllp message", extra={"peer": who, **receipt.log_fields()})
        return True


def run(config: ListenerConfig, store: Store, settings: Settings, metrics_port: int | None = None) -> None:
    """Serve until interrupted (``adapter mllp``); ``metrics_port``: also serve the metrics at
    ``http://<host>:<metrics_port>/metrics`` (prometheus_client's server)."""
    listener = Listener(config, store, settings)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=config.host, registry=listener.metrics.registry)
    try:
        asyncio.run(listener.serve_forever())
    except KeyboardInterrupt:
        pass
