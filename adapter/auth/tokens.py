"""SMART Backend Services tokens (SMART App Launch 2.0 §Backend Services; RFC 7523 client
assertions; RFC 6749 §4.4 client credentials), with PyJWT doing every signature check.

* :func:`verify_assertion` checks a client's signed assertion: ``alg`` RS384 or ES384 only (so
  ``none`` and HMAC are refused), signed by a key of the client's registered JWKS, ``iss`` = ``sub``
  = the client id, ``aud`` = our token endpoint, ``exp`` present and at most five minutes ahead,
  ``jti`` present (its single use is the caller's job: the store records it).
* :func:`issue_access_token` / :func:`verify_access_token`: our access tokens are short-lived JWTs
  (HS256, keyed by ``ADAPTER_TOKEN_KEY``) whose audience is this server's FHIR base URL, carrying
  the client id, role, site and granted scopes.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import PyJWKSet

from adapter.auth.policy import Principal

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ["RS384", "ES384"]
ACCESS_ALGORITHM = "HS256"
#: SMART Backend Services: "exp ... no more than five minutes in the future".
MAX_ASSERTION_LIFETIME = 300
LEEWAY = 30


class TokenError(Exception):
    """A client assertion or access token that is refused. ``error`` is the OAuth 2.0 error code
    (RFC 6749 §5.2 ``invalid_client``…, RFC 6750 §3.1 ``invalid_token``); ``message`` is safe to
    send back (it never repeats the token)."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message


@dataclass(frozen=True)
class Assertion:
    """A verified client assertion: the client id, its ``jti`` and expiry (Unix seconds)."""

    client_id: str
    jti: str
    expires: int


def unverified_client_id(assertion: str) -> str:
    """The ``iss`` of an assertion before it is verified (to find the client's keys). Raises
    :class:`TokenError` (``invalid_client``) when it is not a JWT or names no issuer."""
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise TokenError("invalid_client", "client_assertion is not a JWT") from None
    if header.get("alg") not in ASSERTION_ALGORITHMS:
        raise TokenError("invalid_client", f"client_assertion alg must be one of {', '.join(ASSERTION_ALGORITHMS)}")
    iss = claims.get("iss")
    if not isinstance(iss, str) or not iss:
        raise TokenError("invalid_client", "client_assertion has no iss")
    return iss


def verify_assertion(assertion: str, jwks: dict[str, Any], client_id: str, token_url: str,
                     now: float | None = None) -> Assertion:
    """Verify a client assertion against the client's JWKS. Returns :class:`Assertion`; raises
    :class:`TokenError` (``invalid_client``) for a bad signature, wrong ``alg``, ``iss``/``sub``
    not the client, wrong ``aud``, expired or too-long-lived, or missing ``jti``. A registered key
    that is too weak (an RSA key under 2048 bits, registered before that rule) verifies nothing."""
    now = time.time() if now is None else now
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError:
        raise TokenError("invalid_client", "client_assertion is not a JWT") from None
    if header.get("alg") not in ASSERTION_ALGORITHMS:
        raise TokenError("invalid_client", f"client_assertion alg must be one of {', '.join(ASSERTION_ALGORITHMS)}")
    try:
        keys = PyJWKSet.from_dict(jwks).keys
    except jwt.PyJWTError:
        raise TokenError("invalid_client", "the client's registered JWKS holds no usable key") from None
    from adapter.auth.clients import weak_key_reason

    kid = header.get("kid")
    candidates = [k for k in keys if (kid is None or k.key_id == kid) and weak_key_reason(k) is None]
    if not candidates:
        raise TokenError("invalid_client", "no registered key of the client has the assertion's kid")
    last: Exception | None = None
    for key in candidates:
        try:
            claims = jwt.decode(assertion, key=key, algorithms=ASSERTION_ALGORITHMS, audience=token_url,
                                issuer=client_id, leeway=LEEWAY,
                                options={"require": ["iss", "sub", "aud", "exp", "jti"]})
            break
        except jwt.ExpiredSignatureError:
            raise TokenError("invalid_client", "client_assertion has expired") from None
        except jwt.InvalidAudienceError:
            raise TokenError("invalid_client", "client_assertion aud is not this token endpoint") from None
        except jwt.InvalidIssuerError:
            raise TokenError("invalid_client", "client_assertion iss is not the client") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError("invalid_client", f"client_assertion lacks the claim {exc.claim}") from None
        except jwt.PyJWTError as exc:
            last = exc
    else:
        raise TokenError("invalid_client", f"client_assertion signature is not valid ({last.__class__.__name__})")
    if claims.get("sub") != client_id:
        raise TokenError("invalid_client", "client_assertion sub is not the client")
    if float(claims["exp"]) > now + MAX_ASSERTION_LIFETIME + LEEWAY:
        raise TokenError("invalid_client", "client_assertion exp is more than five minutes ahead")
    jti = claims["jti"]
    if not isinstance(jti, str) or not jti or len(jti) > 255:
        raise TokenError("invalid_client", "client_assertion jti must be a string of 1 to 255 characters")
    return Assertion(client_id, jti, int(float(claims["exp"])))


def issue_access_token(key: str, audience: str, principal: Principal, lifetime: int) -> str:
    """An access token for ``principal`` (HS256 JWT, ``aud`` = the FHIR base URL, ``exp`` =
    now + ``lifetime`` seconds)."""
    now = int(time.time())
    claims = {"iss": audience, "aud": audience, "sub": principal.client_id, "role": principal.role,
              "site": principal.site, "scope": " ".join(principal.scopes), "iat": now, "exp": now + lifetime,
              "jti": str(uuid.uuid4())}
    return jwt.encode(claims, key, algorithm=ACCESS_ALGORITHM)


def verify_access_token(token: str, key: str, audience: str) -> Principal:
    """The principal of a bearer token. Raises :class:`TokenError` (``invalid_token``) when it is
    not ours (signature, ``alg`` other than HS256 including ``none``), expired, or for another
    audience."""
    try:
        claims = jwt.decode(token, key=key, algorithms=[ACCESS_ALGORITHM], audience=audience, issuer=audience,
                            options={"require": ["sub", "aud", "exp", "iss"]})
    except jwt.ExpiredSignatureError:
        raise TokenError("invalid_token", "the access token has expired") from None
    except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
        raise TokenError("invalid_token", "the access token was issued for another server") from None
    except jwt.PyJWTError:
        raise TokenError("invalid_token", "the access token is not valid") from None
    scopes = tuple(s for s in str(claims.get("scope", "")).split() if s)
    return Principal(str(claims["sub"]), str(claims.get("role", "")), claims.get("site"), scopes)
