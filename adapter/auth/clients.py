"""Checks on a client registration (``adapter clients add``): the role, the site of site-bound
roles, the scopes (within the role's, adapter/auth/policy.py) and the JWKS (public RS384/ES384
keys only, RSA of at least 2048 bits, SMART Backend Services §Registering a client)."""

from __future__ import annotations

import re
from typing import Any

import jwt
from jwt import PyJWKSet

from adapter.auth.policy import ROLE_SCOPES, ROLES, SITE_BOUND, ScopeError, grantable, parse_scope

_SITE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_PRIVATE = ("d", "p", "q", "dp", "dq", "qi", "k")
#: Smallest RSA modulus accepted, in bits (NIST SP 800-57 Part 1 Rev. 5 §5.6.1: 2048 bits is the
#: minimum for RSA signatures; 1024-bit keys are factorable in practice).
MIN_RSA_BITS = 2048


def weak_key_reason(key: Any) -> str | None:
    """Why a JWK (a ``PyJWK``) is too weak to verify client assertions, or ``None``: an RSA key
    under :data:`MIN_RSA_BITS` bits. (EC keys are P-384 for ES384, which PyJWT checks.)"""
    from cryptography.hazmat.primitives.asymmetric import rsa

    public = getattr(key, "key", None)
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < MIN_RSA_BITS:
        return f"an RSA key of {public.key_size} bits (at least {MIN_RSA_BITS} are required)"
    return None


class RegistrationError(ValueError):
    """A client registration that cannot be accepted (the message says which part and why)."""


def check_registration(role: str, site: str | None, scopes: list[str] | None, jwks: Any) -> list[str]:
    """Validate a registration and return the scopes to register (the role's widest scopes when
    none are given). Raises :class:`RegistrationError`."""
    if role not in ROLES:
        raise RegistrationError(f"role must be one of {', '.join(ROLES)}, not '{role}'")
    if role in SITE_BOUND and not (site and _SITE.match(site)):
        raise RegistrationError(f"a {role} client is bound to one site: give --site (lower-case letters, digits, -)")
    if role not in SITE_BOUND and site:
        raise RegistrationError(f"a {role} client is not bound to a site: leave --site out")
    requested = scopes or list(ROLE_SCOPES[role])
    try:
        granted = grantable(role, requested, list(ROLE_SCOPES[role]))
    except ScopeError as exc:
        raise RegistrationError(str(exc)) from None
    wider = [s for s in requested if f"system/{parse_scope(s)[0]}.{parse_scope(s)[1]}" not in granted]
    if wider:
        raise RegistrationError(f"scopes beyond the {role} role: {', '.join(wider)} (allowed: {', '.join(ROLE_SCOPES[role])})")
    check_jwks(jwks)
    return granted


def check_jwks(jwks: Any) -> None:
    """A JWKS of public keys usable for RS384 or ES384. Raises :class:`RegistrationError`."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise RegistrationError("the JWKS must be a JSON object with a non-empty 'keys' array")
    for i, k in enumerate(jwks["keys"]):
        if not isinstance(k, dict):
            raise RegistrationError(f"keys[{i}] is not an object")
        if any(p in k for p in _PRIVATE):
            raise RegistrationError(f"keys[{i}] holds private key material: register the public key only")
        if k.get("kty") not in ("RSA", "EC"):
            raise RegistrationError(f"keys[{i}]: kty must be RSA or EC")
        if k.get("alg") not in (None, "RS384", "ES384"):
            raise RegistrationError(f"keys[{i}]: alg must be RS384 or ES384")
    try:
        keys = PyJWKSet.from_dict(jwks).keys
    except jwt.PyJWTError as exc:
        raise RegistrationError(f"the JWKS is not usable: {exc}") from None
    for i, key in enumerate(keys):
        weak = weak_key_reason(key)
        if weak:
            raise RegistrationError(f"keys[{i}] is {weak}")
