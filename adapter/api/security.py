"""Security on the HTTP side: who a request acts as, body limits, the audit trail, the SMART token
endpoint, ``/.well-known/smart-configuration`` and the admins' AuditEvent search.

:class:`SecurityMiddleware` (a plain ASGI middleware, outermost) does, for every request:

1. **Authentication**: with auth on, a ``Bearer`` access token (adapter/auth/tokens.py) of a client
   that is not revoked, except on the public paths (capabilities, SMART configuration, token
   endpoint, API docs). A missing or bad token is answered 401 with an OperationOutcome and a
   ``WWW-Authenticate`` header (RFC 6750 §3). With auth off (development mode only) every request
   acts as the ``development`` principal.
2. **Body limits**: a declared ``Content-Length`` over the limit is answered 413 before anything
   is read; a streamed body is cut off with 413 as soon as it passes the limit.
3. **Audit**: one AuditEvent per request (adapter/auth/audit.py), written before the last byte of
   the response is sent: a client that has its answer finds its call in the trail. When the
   database is busy (SQLite during an ingestion) the event is spooled to disk instead and written
   within seconds (adapter/store/audit_spool.py): never dropped, and the request is not held up.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any
from urllib.parse import parse_qsl, urlencode

import anyio
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from adapter.api.fhir_http import FHIRError, FHIRResponse, operation_outcome
from adapter.auth.audit import audit_event
from adapter.auth.policy import ROLE_SCOPES, Principal, ScopeError, grantable
from adapter.auth.tokens import ASSERTION_TYPE, TokenError, issue_access_token, unverified_client_id, verify_access_token
from adapter.auth.tokens import verify_assertion as _verify_assertion
from adapter.config import Settings
from adapter.store import Store
from adapter.store.db import now_instant
from adapter.store.security import AuditTrail, ClientRegistry

log = logging.getLogger("adapter.security")

PRINCIPAL = "adapter.principal"
#: Paths served without a token (SMART discovery, the token endpoint, capabilities, API docs, and
#: the operator's health checks and metrics, which hold no patient data).
PUBLIC = frozenset({"/metadata", "/.well-known/smart-configuration", "/auth/token", "/docs", "/openapi.json",
                    "/docs/oauth2-redirect", "/redoc", "/health/live", "/health/ready", "/metrics", "/ui/login",
                    "/ui/logout"})
#: The dashboard's sign-in cookie: an access token, HttpOnly and SameSite=Strict, accepted only for
#: GET requests of the dashboard and the outcome downloads it links to (never for the FHIR API or
#: any write, so a forged cross-site request can change nothing).
UI_COOKIE = "adapter_ui_token"


def _cookie(scope: dict[str, Any], name: str) -> str:
    from http.cookies import SimpleCookie

    raw = dict(scope.get("headers") or []).get(b"cookie", b"").decode("latin-1")
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # noqa: BLE001  (a malformed cookie header is no cookie)
        return ""
    return jar[name].value if name in jar else ""


def _cookie_allowed(scope: dict[str, Any]) -> bool:
    return scope["method"] in ("GET", "HEAD") and (scope["path"] == "/ui" or scope["path"].startswith(("/ui/", "/outcomes")))


def _browser_page(scope: dict[str, Any]) -> bool:
    accept = dict(scope.get("headers") or []).get(b"accept", b"")
    return scope["method"] == "GET" and (scope["path"] == "/ui" or scope["path"].startswith("/ui/")) and b"text/html" in accept


def principal(request: Request) -> Principal:
    """The principal the request acts as (set by :class:`SecurityMiddleware`)."""
    p = request.scope.get(PRINCIPAL)
    if p is None:
        raise FHIRError(401, "login", "this request needs a bearer token")
    return p


def require(request: Request, op: str, rtype: str = "*", level: str | None = None) -> Principal:
    """The request's principal, when its role and scopes allow ``op`` on ``rtype``
    (adapter/auth/policy.py); otherwise :class:`FHIRError` 403 (``forbidden``)."""
    p = principal(request)
    if not p.allows(op, rtype, level):
        raise FHIRError(403, "forbidden", f"the {p.role} role or the token's scopes do not allow {op} on {rtype}")
    return p


def token_key(settings: Settings) -> str:
    """The access-token signing key: the configured one, or (development mode) a random key made
    once per process."""
    global _DEV_KEY
    if settings.token_key:
        return settings.token_key
    if _DEV_KEY is None:
        _DEV_KEY = secrets.token_urlsafe(32)
    return _DEV_KEY


_DEV_KEY: str | None = None


class BodyTooLarge(FHIRError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "too-long", f"the request body is larger than the limit of {limit} bytes")


def audience(settings: Settings, scope: dict[str, Any]) -> str:
    """The FHIR base URL that tokens are issued for and checked against (SMART Backend Services:
    the assertion's ``aud`` is ``<base>/auth/token``, the access token's ``aud`` is ``<base>``):
    ``ADAPTER_BASE_URL``, which production requires. Without it (development mode only) the
    address the server itself listens on. Never a request header: a ``Host`` header is the
    client's to choose, so an audience taken from it proves nothing (RFC 7523 §3, "aud")."""
    if settings.base_url:
        return settings.base_url.rstrip("/")
    host, port = scope.get("server") or ("127.0.0.1", settings.port)
    host = f"[{host}]" if ":" in str(host) else host
    return f"{scope.get('scheme', 'http')}://{host}:{port}{scope.get('root_path', '')}".rstrip("/")


class SecurityMiddleware:
    """See the module docstring. :meth:`base` gives the tokens' audience (:func:`audience`)."""

    def __init__(self, app: Any, settings: Settings, store: Store, spool: Any = None) -> None:
        from adapter.store.audit_spool import AuditSpool

        self.app, self.settings, self.store = app, settings, store
        self.audit = AuditTrail(store)
        #: writes each AuditEvent at once, or spools it when the database is busy (never drops it)
        self.spool = spool or AuditSpool(self.audit, settings.audit_spool_dir)
        self.clients = ClientRegistry(store)

    def base(self, scope: dict[str, Any]) -> str:
        return audience(self.settings, scope)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:  # noqa: C901
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        address = (scope.get("client") or ("", 0))[0]
        state: dict[str, Any] = {"code": 500, "who": None, "failure": None, "recorded": False}

        async def record() -> None:
            """Write the AuditEvent once, before the response's last byte leaves: a client that
            has its answer finds its call in the trail."""
            if state["recorded"]:
                return
            state["recorded"] = True
            who, failure = state["who"], state["failure"] or scope.get("adapter.auth_failure")
            if who is None and scope.get("adapter.auth_client"):  # the token endpoint names its client
                who = Principal(scope["adapter.auth_client"], "", None)
            await anyio.to_thread.run_sync(self._record, method, path, state["code"], who, address, failure)

        async def send_audited(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["code"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                await record()
            await send(message)

        try:
            if not self.settings.auth_enabled:
                state["who"] = Principal.development()
            elif path not in PUBLIC:
                state["who"], state["failure"] = await anyio.to_thread.run_sync(self._authenticate, scope)
                if state["who"] is None and _browser_page(scope):  # a person at the dashboard: to the sign-in page
                    await send_audited({"type": "http.response.start", "status": 303,
                                        "headers": [(b"location", b"/ui/login"), (b"content-length", b"0")]})
                    await send_audited({"type": "http.response.body", "body": b""})
                    return
                if state["who"] is None:
                    failure = state["failure"]
                    await self._reply(send_audited, 401, operation_outcome(
                        "expired" if "expired" in (failure or "") else "login" if failure == "no bearer token" else "security",
                        f"authentication failed: {failure}"),
                        {"www-authenticate": f'Bearer realm="pedall-fhir", error="invalid_token", '
                                             f'error_description="{failure}"'})
                    return
            scope[PRINCIPAL] = state["who"]
            limit = self.settings.max_upload_bytes + 64 * 1024 if path == "/$ingest" else self.settings.max_body_bytes
            declared = dict(scope.get("headers") or []).get(b"content-length", b"")
            if declared.isdigit() and int(declared) > limit:
                await self._reply(send_audited, 413, BodyTooLarge(limit).outcome(), {"connection": "close"})
                return
            seen = {"bytes": 0, "cut": False}

            async def limited_receive() -> dict[str, Any]:
                if seen["cut"]:
                    return {"type": "http.disconnect"}
                message = await receive()
                if message["type"] == "http.request":
                    seen["bytes"] += len(message.get("body", b""))
                    if seen["bytes"] > limit:  # answer 413 now; the app sees the client leave
                        seen["cut"] = True
                        await self._reply(send_audited, 413, BodyTooLarge(limit).outcome(), {"connection": "close"})
                        return {"type": "http.disconnect"}
                return message

            async def send_app(message: dict[str, Any]) -> None:
                if seen["cut"]:  # the 413 is already sent; whatever the app answers is dropped
                    return
                await send_audited(message)

            await self.app(scope, limited_receive, send_app)
        finally:
            await record()  # when no response went out (an error, a client gone)

    def _authenticate(self, scope: dict[str, Any]) -> tuple[Principal | None, str | None]:
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if not header and _cookie_allowed(scope):  # the dashboard's sign-in cookie (GET of /ui and /outcomes only)
            scheme, token = "bearer", _cookie(scope, UI_COOKIE)
        if scheme.lower() != "bearer" or not token.strip():
            return None, "no bearer token"
        try:
            p = verify_access_token(token.strip(), token_key(self.settings), self.base(scope))
        except TokenError as exc:
            return None, exc.message
        client = self.clients.get(p.client_id)
        if client is None or client.revoked:
            return None, "the client is unknown or revoked"
        return p, None

    def _record(self, method: str, path: str, status: int, who: Principal | None, address: str,
                failure: str | None) -> None:
        try:
            ev = audit_event(recorded=now_instant(), method=method, path=path, status=status,
                             client_id=who.client_id if who else None, role=(who.role or None) if who else None,
                             site=who.site if who else None, address=address, auth_failure=failure)
            what = ev["entity"][0]["what"]
            self.spool.record(ev, client_id=who.client_id if who else None, role=(who.role or None) if who else None,
                              site=who.site if who else None, status=status, method=method, path=path,
                              entity=what.get("reference") or what.get("display"))
        except Exception as exc:  # noqa: BLE001  (neither stored nor spooled: the spool folder failed)
            log.error("could not write or spool the audit event: %s", exc.__class__.__name__)

    @staticmethod
    async def _reply(send: Any, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        raw = orjson.dumps(body)
        hdrs = [(b"content-type", b"application/fhir+json"), (b"content-length", str(len(raw)).encode())]
        hdrs += [(k.encode(), v.encode("latin-1", "replace")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": raw})


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    """RFC 6749 §5.2 error response of the token endpoint."""
    return JSONResponse({"error": error, "error_description": description}, status_code=status,
                        headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def add_security_routes(app: FastAPI, store: Store, settings: Settings, base_of: Any) -> None:
    """The token endpoint, SMART discovery and the AuditEvent search (before the generic routes)."""
    clients = ClientRegistry(store)
    trail = AuditTrail(store)

    @app.get("/.well-known/smart-configuration", response_class=JSONResponse,
             summary="SMART configuration (SMART App Launch 2.0 §Conformance; Backend Services)")
    def smart_configuration(request: Request) -> JSONResponse:
        base = audience(settings, request.scope)
        return JSONResponse({
            "issuer": base, "token_endpoint": f"{base}/auth/token", "jwks_uri": None,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
            "scopes_supported": sorted({s for scopes in ROLE_SCOPES.values() for s in scopes}),
            "capabilities": ["client-confidential-asymmetric", "permission-v2"],
        })

    @app.post("/auth/token", response_class=JSONResponse,
              summary="Token endpoint (OAuth 2.0 client credentials with a private_key_jwt assertion)")
    async def token(request: Request) -> JSONResponse:
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("client_assertion_type") != ASSERTION_TYPE or not form.get("client_assertion"):
            return _oauth_error(400, "invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}, with a client_assertion")
        base = audience(settings, request.scope)
        try:
            return await anyio.to_thread.run_sync(_grant, form, base, request.scope)
        except TokenError as exc:
            request.scope["adapter.auth_failure"] = exc.message
            return _oauth_error(401 if exc.error == "invalid_client" else 400, exc.error, exc.message)

    def _grant(form: dict[str, str], base: str, scope: dict[str, Any]) -> JSONResponse:
        client_id = unverified_client_id(form["client_assertion"])
        client = clients.get(client_id)
        if client is not None:  # the audit event names a registered client (never an arbitrary iss)
            scope["adapter.auth_client"] = client.client_id
        if client is None or client.revoked:
            raise TokenError("invalid_client", "the client is unknown or revoked")
        assertion = _verify_assertion(form["client_assertion"], client.jwks, client.client_id, f"{base}/auth/token")
        if not clients.use_jti(client.client_id, assertion.jti, assertion.expires):
            raise TokenError("invalid_client", "client_assertion jti was already used (replay)")
        try:
            scopes = grantable(client.role, form.get("scope", "").split(), client.scopes)
        except ScopeError as exc:
            raise TokenError("invalid_scope", str(exc)) from None
        if not scopes:
            raise TokenError("invalid_scope", "none of the requested scopes is allowed for this client")
        who = Principal(client.client_id, client.role, client.site, tuple(scopes))
        return JSONResponse({"access_token": issue_access_token(token_key(settings), base, who, settings.token_lifetime_seconds),
                             "token_type": "bearer", "expires_in": settings.token_lifetime_seconds,
                             "scope": " ".join(scopes)}, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    @app.get("/AuditEvent", summary="Search the audit trail (admins only)")
    def audit_search(request: Request) -> FHIRResponse:
        require(request, "audit", "AuditEvent")
        args: dict[str, Any] = {"count": 100, "offset": 0}
        for name, value in request.query_params.multi_items():
            if name == "date":
                prefix, stamp = (value[:2], value[2:]) if value[:2] in ("ge", "gt", "le", "lt") else ("ge", value)
                args["since" if prefix in ("ge", "gt") else "until"] = stamp
            elif name == "agent":
                args["client_id"] = value.split("|")[-1]
            elif name in ("outcome", "action", "subtype", "entity"):
                args[name] = value.split("|")[-1]
            elif name in ("_count", "_offset"):
                if not value.isascii() or not value.isdigit() or int(value) > 2**31 - 1:
                    raise FHIRError(400, "invalid", f"{name} must be a whole number from 0 to {2**31 - 1}")
                args["count" if name == "_count" else "offset"] = min(int(value), 1000) if name == "_count" else int(value)
            else:
                raise FHIRError(400, "not-supported", f"AuditEvent search parameter '{name[:40]}' is not supported "
                                "(date, agent, outcome, action, subtype, entity, _count, _offset)")
        total, events = trail.search(**args)
        base = base_of(request)
        kept = [(k, v) for k, v in request.query_params.multi_items() if k != "_offset"]

        def page(offset: int) -> str:
            return f"{base}/AuditEvent?" + urlencode([*kept, ("_offset", str(offset))])

        links = [{"relation": "self", "url": page(args["offset"])}]
        if args["offset"] + args["count"] < total:
            links.append({"relation": "next", "url": page(args["offset"] + args["count"])})
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links}
        if events:
            bundle["entry"] = [{"fullUrl": f"{base}/AuditEvent/{e['id']}", "resource": e, "search": {"mode": "match"}}
                               for e in events]
        return FHIRResponse(bundle)

