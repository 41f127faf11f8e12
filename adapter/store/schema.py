"""Table definitions (SQLAlchemy Core). The schema itself is created by Alembic migrations."""

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, LargeBinary, MetaData, String, Table, Text, text

metadata = MetaData()

#: Current version of every resource, as JSON, with the columns that search needs.
resources = Table(
    "resources", metadata,
    Column("type", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", String(40), nullable=False),  # ISO 8601 UTC instant, sortable as text
    Column("site", String(32), nullable=False),
    Column("patient_id", String(64)),  # compartment: the Patient this resource is about
    Column("code_system", String(255)),
    Column("code", String(128)),
    Column("effective", String(40)),  # effective[x] / date / performed[x] / period start
    Column("status", String(32)),
    Column("content_hash", String(64), nullable=False),  # SHA-256 of the resource without meta
    Column("deleted", Boolean, nullable=False, default=False),
    Column("resource", Text, nullable=False),
    Column("created", String(40)),  # when version 1 was stored: search snapshots exclude later creations
    # content_hash of the version an ingestion last wrote (NULL: none did): a later ingestion of an
    # unchanged row keeps a correction made since through the REST API (adapter/store/db.py upsert)
    Column("ingested_hash", String(64)),
    # a number for the resource, given when it is created and never changed (revision 0011): the
    # search index names a resource by it. New numbers only grow, so an ingestion appends to
    # ``ix_search_resource`` instead of inserting at random places of a (type, id) index
    Column("rid", BigInteger, nullable=False),
    Index("ix_resources_site_type", "site", "type"),
    Index("ix_resources_rid", "rid", unique=True),
    Index("ix_resources_patient", "patient_id"),
    Index("ix_resources_code", "type", "code"),
    Index("ix_resources_last_updated", "last_updated"),
)

#: Search index: one row per indexed value of a current resource (see adapter/search/params.py),
#: which ``rid`` names (``resources.rid``; ``type`` is its type).
search_index = Table(
    "search_index", metadata,
    Column("type", String(64), nullable=False),
    Column("rid", BigInteger, nullable=False),
    Column("name", String(64), nullable=False),  # search parameter name
    Column("system", String(255)),  # token system / quantity unit system
    Column("value", String(255)),  # token code, "Type/id" reference, quantity unit, lower-cased string
    Column("num", Float),  # quantity value
    Column("lo", String(32)),  # date range start (sortable text)
    Column("hi", String(32)),  # date range end
    Index("ix_search_value", "type", "name", "value"),
    # only the rows that carry a date range / a number (revision 0010)
    Index("ix_search_date", "type", "name", "lo", "hi", sqlite_where=text("lo IS NOT NULL"),
          postgresql_where=text("lo IS NOT NULL")),
    Index("ix_search_num", "type", "name", "num", sqlite_where=text("num IS NOT NULL"),
          postgresql_where=text("num IS NOT NULL")),
    Index("ix_search_resource", "rid"),
)

#: Every version ever stored (including the current one).
resource_history = Table(
    "resource_history", metadata,
    Column("type", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("version_id", Integer, primary_key=True),
    Column("last_updated", String(40), nullable=False),
    Column("method", String(8), nullable=False),  # POST (create) | PUT (update)
    Column("resource", Text, nullable=False),
)

#: One row per ingestion that was committed: the report as JSON.
ingestions = Table(
    "ingestions", metadata,
    Column("id", String(36), primary_key=True),
    Column("site", String(32), nullable=False),
    Column("mapping", String(64), nullable=False),
    Column("file_name", String(255), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("started", String(40), nullable=False),
    Column("rows_read", Integer, nullable=False),
    Column("rows_mapped", Integer, nullable=False),
    Column("rows_rejected", Integer, nullable=False),
    Column("report", Text, nullable=False),
    Index("ix_ingestions_site", "site", "started"),
)

#: The outcomes cohort, one row per Patient: its course (adapter/outcomes/cohort.py) as JSON,
#: rebuilt in the same transaction as any write to the patient's compartment, so outcome reports
#: read one small row per patient instead of every resource (a materialised view, like the flat
#: tables SQL on FHIR ViewDefinitions produce). ``course_version`` names the extraction code.
patient_course = Table(
    "patient_course", metadata,
    Column("patient_id", String(64), primary_key=True),
    Column("site", String(32), nullable=False),
    Column("course_version", String(16), nullable=False),
    Column("course", Text, nullable=False),
    Index("ix_patient_course_site", "site"),
)

#: Bulk Data $export jobs (adapter/bulk). ``status``: accepted | in-progress | completed | failed |
#: cancelled | expired. ``params`` is the kick-off's parsed parameters (JSON); ``manifest`` the
#: completion manifest (JSON), set in the same statement that marks the job completed, so a
#: manifest never lists a file that is not whole. ``heartbeat`` is renewed while a worker runs the
#: job: a job in progress whose heartbeat is stale was cut off (server killed) and is run again.
export_jobs = Table(
    "export_jobs", metadata,
    Column("id", String(36), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("request", Text, nullable=False),
    Column("params", Text, nullable=False),
    Column("created", String(40), nullable=False),
    Column("transaction_time", String(40), nullable=False),
    Column("heartbeat", String(40)),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("progress", String(200)),
    Column("manifest", Text),
    Column("error", Text),
    Column("finished", String(40)),
    Index("ix_export_jobs_status", "status"),
)

#: The subscription outbox (adapter/subscriptions): one row per notification owed, written in the
#: transaction that stores the matching resource, so an event exists if and only if the write
#: committed. ``event_number`` counts from 1 per subscription (the Backport IG's
#: ``eventsSinceSubscriptionStart``); a row stays until delivered (``delivered`` set) or until its
#: subscription is deleted.
subscription_events = Table(
    "subscription_events", metadata,
    Column("subscription_id", String(64), primary_key=True),
    Column("event_number", Integer, primary_key=True),
    Column("resource_type", String(64), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("created", String(40), nullable=False),
    Column("delivered", String(40)),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt", String(40), nullable=False),
    Column("last_error", Text),
    Index("ix_subscription_events_pending", "delivered", "next_attempt"),
)

#: SMART Backend Services clients (adapter/auth): each has a role (``site``, ``coordinator``,
#: ``subscriber``, ``admin``), a site for site-bound roles, the SMART v2 system scopes it may be
#: granted, and its public JWKS (RS384 / ES384 keys) that verify its client assertions.
auth_clients = Table(
    "auth_clients", metadata,
    Column("client_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("role", String(16), nullable=False),
    Column("site", String(32)),
    Column("scopes", Text, nullable=False),
    Column("jwks", Text, nullable=False),
    Column("created", String(40), nullable=False),
    Column("revoked", String(40)),
)

#: Client-assertion ids already used (RFC 7523 §3 ``jti``), kept until the assertion expires: a
#: replayed assertion is refused.
auth_jti = Table(
    "auth_jti", metadata,
    Column("client_id", String(64), primary_key=True),
    Column("jti", String(255), primary_key=True),
    Column("expires", Integer, nullable=False),
)

#: The audit trail: one FHIR R4 AuditEvent per request (and per authentication failure), with the
#: columns its search needs. Append-only: database triggers refuse UPDATE and DELETE.
audit_events = Table(
    "audit_events", metadata,
    Column("id", String(36), primary_key=True),
    Column("recorded", String(40), nullable=False),
    Column("client_id", String(64)),
    Column("role", String(16)),
    Column("site", String(32)),
    Column("action", String(1), nullable=False),
    Column("subtype", String(32), nullable=False),
    Column("outcome", String(2), nullable=False),
    Column("status", Integer, nullable=False),
    Column("method", String(8), nullable=False),
    Column("path", String(500), nullable=False),
    Column("entity", String(200)),
    Column("resource", Text, nullable=False),
    Index("ix_audit_events_recorded", "recorded"),
    Index("ix_audit_events_client", "client_id", "recorded"),
)

#: Who created each Subscription through the API (client, role, site and the token's scopes), so
#: that every delivery checks the owner may still read what it sends; and the channel headers
#: (``Name: value``, often credentials), kept here and masked in the stored resource.
subscription_owners = Table(
    "subscription_owners", metadata,
    Column("subscription_id", String(64), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("site", String(32)),
    Column("scopes", Text, nullable=False),
    Column("headers", Text, nullable=False),  # JSON list of [name, value]
)

#: HL7 v2 messages received over MLLP and not stored (adapter/mllp): acknowledged ``AE`` (a row
#: issue) or ``AR`` (unparseable, or for another site), each with its errors, to list and replay
#: from the CLI (``adapter dead-letters``). ``replayed``: when a replay stored it.
mllp_dead_letters = Table(
    "mllp_dead_letters", metadata,
    Column("id", String(36), primary_key=True),
    Column("received", String(40), nullable=False),
    Column("site", String(32), nullable=False),
    Column("mapping", String(64), nullable=False),
    Column("control_id", String(200)),
    Column("ack_code", String(2), nullable=False),
    Column("errors", Text, nullable=False),
    Column("message", LargeBinary, nullable=False),
    Column("replayed", String(40)),
    Column("replay_ingestion", String(36)),
    Index("ix_mllp_dead_letters_site", "site", "received"),
)
