"""Who may do what: roles, SMART v2 system scopes, and the principal a request acts as.

Two gates, both must pass:

1. **The role** (what the client was registered as) decides which operations it may use at all and
   which part of the store it sees:

   ============  =====================================================================================
   site          ingest for its site; read, search, history, writes, transactions, ``$everything``,
                 ``$export``, ``$viewdefinition-run``, Subscriptions — all confined to its site's
                 compartment
   subscriber    Subscriptions (create, read, update, delete, ``$status``, ``$events``), and read/search
                 of Patient and Observation — confined to its site
   coordinator   outcomes, Measures and MeasureReports, Group and ResearchStudy reads, and
                 de-identified ``Group/{id}/$export`` and ``$viewdefinition-run`` with a group — nothing
                 identifying
   admin         the audit trail (AuditEvent search); clients are managed with ``adapter clients``
   ============  =====================================================================================

2. **The token's scopes** (SMART App Launch 2.0 §Scopes, ``system/<Type>.<cruds>``; v1 ``.read`` /
   ``.write`` / ``.*`` are read as ``rs`` / ``cud`` / ``cruds``) narrow it further per resource type.

A resource outside a site-bound principal's site is not found (404), never forbidden (403): its
existence is not revealed. An operation the role or the scopes do not allow at all is 403.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ROLES = ("site", "coordinator", "subscriber", "admin")
SITE_BOUND = ("site", "subscriber")

#: The widest scopes each role can be registered with (SMART v2 system scopes).
ROLE_SCOPES: dict[str, tuple[str, ...]] = {
    "site": ("system/*.cruds",),
    "subscriber": ("system/Subscription.cruds", "system/Observation.rs", "system/Patient.rs"),
    "coordinator": ("system/*.rs",),
    "admin": ("system/AuditEvent.rs",),
}

#: Resource types a coordinator may read or search directly (no identifying content).
COORDINATOR_TYPES = frozenset({"Group", "ResearchStudy", "Measure", "MeasureReport"})
#: Resource types a subscriber may read or search (within its site).
SUBSCRIBER_READ_TYPES = frozenset({"Subscription", "Observation", "Patient"})

_SCOPE = re.compile(r"^system/(\*|[A-Z][A-Za-z]{1,63})\.(\*|read|write|c?r?u?d?s?)$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}

#: Operation -> the SMART permission letter it needs on its resource type.
LETTER = {"read": "r", "vread": "r", "history": "r", "search": "s", "create": "c", "update": "u", "delete": "d",
          "everything": "r", "export": "r", "ingest": "c", "outcomes": "r", "subscription-op": "r", "audit": "r",
          "validate": ""}


class ScopeError(ValueError):
    """A scope string that is not a SMART v2 (or v1) system scope."""


def parse_scope(scope: str) -> tuple[str, str]:
    """``system/Observation.rs`` -> ``("Observation", "rs")``. Raises :class:`ScopeError`."""
    m = _SCOPE.match(scope)
    if not m or not m.group(2):
        raise ScopeError(f"'{scope[:80]}' is not a SMART system scope (system/<Type>.<cruds>)")
    letters = _V1.get(m.group(2), m.group(2))
    return m.group(1), letters


def covers(granted: tuple[str, ...] | list[str], rtype: str, letter: str) -> bool:
    """Whether ``granted`` scopes allow ``letter`` (c, r, u, d or s) on ``rtype`` (``*``: every type
    must be allowed, i.e. a wildcard scope)."""
    for s in granted:
        t, letters = parse_scope(s)
        if letter in letters and (t == "*" or (t == rtype and rtype != "*")):
            return True
    return False


def grantable(role: str, requested: list[str], registered: list[str]) -> list[str]:
    """The requested scopes a client of ``role`` registered with ``registered`` may get: each
    requested scope narrowed to what both the role and the registration allow (letters kept in
    ``cruds`` order). Scopes that give nothing are dropped. Raises :class:`ScopeError`."""
    out = []
    for s in requested:
        t, letters = parse_scope(s)
        keep = "".join(c for c in "cruds" if c in letters and _allows(ROLE_SCOPES[role], t, c) and _allows(registered, t, c))
        if keep:
            out.append(f"system/{t}.{keep}")
    return out


def _allows(scopes: tuple[str, ...] | list[str], rtype: str, letter: str) -> bool:
    for s in scopes:
        t, letters = parse_scope(s)
        if letter in letters and (t == "*" or t == rtype):
            return True
    return False


@dataclass(frozen=True)
class Principal:
    """Who a request acts as. ``role`` is one of :data:`ROLES`, or ``development`` (authentication
    off: development mode only, everything allowed). ``site`` is set for site-bound roles."""

    client_id: str
    role: str
    site: str | None = None
    scopes: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def development(cls) -> Principal:
        return cls("development", "development", None, ("system/*.cruds",))

    @property
    def site_scope(self) -> str | None:
        """The only site this principal sees (``None``: every site)."""
        return self.site if self.role in SITE_BOUND else None

    def allows(self, op: str, rtype: str = "*", level: str | None = None) -> bool:
        """Whether the role and the scopes allow ``op`` (a key of :data:`LETTER`) on ``rtype``.
        ``level`` is the export level (``system``, ``patient``, ``group``) for ``op="export"``."""
        if self.role == "development":
            return True
        if not self._role_allows(op, rtype, level):
            return False
        letter = LETTER[op]
        return not letter or covers(self.scopes, rtype, letter)

    def _role_allows(self, op: str, rtype: str, level: str | None) -> bool:  # noqa: PLR0911
        if op == "validate":
            return True
        if self.role == "site":
            return op not in ("audit", "outcomes")
        if self.role == "subscriber":
            if op in ("read", "vread", "history", "search"):
                return rtype in SUBSCRIBER_READ_TYPES
            return op == "subscription-op" or (op in ("create", "update", "delete") and rtype == "Subscription")
        if self.role == "coordinator":
            if op in ("read", "vread", "search"):
                return rtype in COORDINATOR_TYPES
            return op == "outcomes" or (op == "export" and level == "group")
        if self.role == "admin":
            return op == "audit"
        return False
