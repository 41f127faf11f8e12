"""Typed settings, read from the environment (prefix ``ADAPTER_``) or a ``.env`` file.

One :class:`Settings` object, as in fastapi/full-stack-fastapi-template's ``core/config.py``: unsafe
development defaults are refused when ``ADAPTER_ENV=production``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent

#: Canonical base of every project artefact (profiles, CodeSystems, identifier systems).
CANONICAL = "https://w3id.org/pedall-fhir"

DEV_ID_KEY = "development-only-id-key-change-me"
DEFAULT_DATABASE_URL = f"sqlite:///{ROOT / '.adapter-data' / 'adapter.sqlite3'}"


class Settings(BaseSettings):
    """Adapter settings.

    Attributes:
        env: ``development`` or ``production``. Production refuses the development id key.
        database_url: SQLAlchemy URL. Default: an embedded SQLite file under ``.adapter-data/``.
        id_key: secret for the keyed hash (HMAC-SHA256) that derives resource ids from site + source
            keys, so that ids cannot be reversed to record numbers by enumeration.
        mappings_dir: folder with ``<site>/site.yaml`` and ``<site>/<export>.yaml`` mapping files.
        profiles_dir: folder with our StructureDefinitions, CodeSystems and ValueSets.
        batch_size: resources written per database round trip during ingestion.
        host, port: where ``adapter serve`` listens (default http://127.0.0.1:8000).
        max_upload_bytes: largest export accepted by ``POST /$ingest`` (larger: HTTP 413).
        base_url: the public base URL: the audience of SMART tokens (required in production), and
            the base of Bundle links and ``Location`` headers (by default, in development, the URL the
            request came in on; tokens then use the address the server listens on).
        pseudonym_key: the network's secret for study pseudonyms (HMAC-SHA256 of site + local
            identifier, adapter/privacy.py). No default: de-identified output is refused without it.
        deidentify_birth_date: how de-identified Patients give the birth date: ``year-month`` or ``year``.
        deidentify_date_shift_days: de-identified output moves every date of a patient by the same
            keyed-hash offset within this many days (0: dates other than the birth date are kept).
        small_cell_threshold: coordinator-facing aggregate counts from 1 to this − 1 are shown as
            ``"<threshold"`` (default 5).
        study_id, study_title: the network's study (ResearchStudy id, Group ``study-<id>``).
        group_everything_max_patients: largest Group ``$everything`` answers in one Bundle (413 above).
        subscription_endpoint_allowlist: URL prefixes a Subscription's endpoint must start with
            outside development mode.
        subscription_timeout_seconds: per-notification HTTP timeout (a hanging endpoint delays only
            its own subscription).
        subscription_max_failures: failed attempts in a row after which a subscription's status
            becomes ``error`` (its events are kept; setting it back to ``active`` resumes delivery).
        subscription_backoff_seconds, subscription_backoff_max_seconds: exponential backoff between
            attempts (with jitter), from the first to the cap.
        subscription_event_retention_days: delivered events older than this are deleted (each
            subscription's newest event stays, so numbering goes on); ``$events`` cannot replay them.
            0 keeps every event. Undelivered events are always kept.
        export_dir: where Bulk Data $export jobs write their NDJSON files (one folder per job).
        export_max_jobs: exports accepted or running at once; one more kick-off gets HTTP 429.
        export_max_file_bytes: an NDJSON file past this size is closed and the type goes on in a
            new part (``Observation.2.ndjson``).
        export_expiry_seconds: completed exports (files and manifest) are deleted after this long.
        export_max_rows_per_second: throttle of each export's database reads (0: none), so that a
            large export never starves ingestion on a shared production database.
        export_stale_seconds: a running export whose worker has not reported for this long was cut
            off (server killed) and is run again by another worker.
        export_deidentify: force ``_deidentify=true`` on every bulk export (exports leave the network).
        auth: require SMART Backend Services bearer tokens (adapter/auth). Default: on in production,
            off in development (the local demo); production refuses ``false``.
        token_key: the secret that signs our access tokens (HS256). Development mode makes a random
            one per process when unset; production refuses to start without it.
        token_lifetime_seconds: how long an access token lasts (SMART recommends at most 5 minutes).
        max_body_bytes: largest request body (JSON, form) outside ``$ingest``; larger: HTTP 413, told
            by ``Content-Length`` before anything is read, or as soon as a streamed body passes it.
        audit_spool_dir: where AuditEvents that the database could not take at once (busy) wait, on
            disk, until they are written (adapter/store/audit_spool.py); none is ever dropped.
        ingest_lock_wait_seconds: how long an ingestion waits for another ingestion of the same site
            to finish (ingestions of a site run one at a time); then HTTP 503 with ``Retry-After``
            (CLI exit 7). On SQLite every write waits for the database's single write lock for up to
            ``sqlite_busy_seconds``.
        mllp_host, mllp_port: where ``adapter mllp`` listens for HL7 v2 over MLLP (default
            127.0.0.1:2575). mllp_site, mllp_mapping: when both are set, ``adapter serve`` runs the
            same listener beside the REST API.
        mllp_max_connections: open MLLP connections at once; one more is closed at once.
        mllp_idle_timeout_seconds: an MLLP connection with no message for this long is closed.
        mllp_max_message_bytes: largest HL7 v2 message (larger: AR, and the connection is closed).
        mllp_allow: comma-separated peer networks (``10.2.0.0/16,192.168.1.7``) that may connect;
            required outside development mode (development accepts any peer, on 127.0.0.1 only).
        mllp_tls_cert, mllp_tls_key: PEM certificate chain and key: MLLP over TLS.
    """

    model_config = SettingsConfigDict(env_prefix="ADAPTER_", env_file=".env", extra="ignore")

    env: Literal["development", "production"] = "development"
    database_url: str = DEFAULT_DATABASE_URL
    id_key: str = DEV_ID_KEY
    mappings_dir: Path = ROOT / "mappings"
    profiles_dir: Path = ROOT / "profiles"
    fhir_schema_path: Path = ROOT / "profiles" / "fhir.r4.schema.json"
    batch_size: int = 2000
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 50 * 1024 * 1024
    base_url: str | None = None
    pseudonym_key: str | None = None
    deidentify_birth_date: Literal["year-month", "year"] = "year-month"
    deidentify_date_shift_days: int = Field(default=0, ge=0, le=3650)
    small_cell_threshold: int = 5
    study_id: str = Field(default="pedall-blinatumomab", pattern=r"^[A-Za-z0-9-]{1,58}$")
    study_title: str = "Blinatumomab before HSCT in relapsed/refractory paediatric B-ALL (multicentre outcomes)"
    group_everything_max_patients: int = 100
    subscription_endpoint_allowlist: list[str] = Field(default_factory=list)
    subscription_timeout_seconds: float = 5
    subscription_max_failures: int = 20
    subscription_backoff_seconds: float = 1
    subscription_backoff_max_seconds: float = 300
    subscription_event_retention_days: float = Field(default=30, ge=0)
    export_dir: Path = ROOT / ".adapter-data" / "exports"
    export_max_jobs: int = 2
    export_max_file_bytes: int = 100 * 1024 * 1024
    export_expiry_seconds: int = 24 * 3600
    export_max_rows_per_second: int = 0
    export_stale_seconds: float = 30
    export_deidentify: bool = False
    auth: bool | None = None
    token_key: str | None = None
    token_lifetime_seconds: int = Field(default=300, ge=30, le=3600)
    max_body_bytes: int = 20 * 1024 * 1024
    audit_spool_dir: Path = ROOT / ".adapter-data" / "audit-spool"
    ingest_lock_wait_seconds: float = Field(default=120, gt=0)
    sqlite_busy_seconds: float = Field(default=30, gt=0)
    mllp_host: str = "127.0.0.1"
    mllp_port: int = Field(default=2575, ge=0, le=65535)
    mllp_site: str | None = None
    mllp_mapping: str | None = None
    mllp_max_connections: int = Field(default=16, ge=1)
    mllp_idle_timeout_seconds: float = Field(default=300, gt=0)
    mllp_max_message_bytes: int = Field(default=1024 * 1024, ge=1024)
    mllp_allow: str | None = None
    mllp_tls_cert: str | None = None
    mllp_tls_key: str | None = None

    @property
    def auth_enabled(self) -> bool:
        """Whether requests need a bearer token (always in production)."""
        return self.auth if self.auth is not None else self.env == "production"

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> Settings:
        """Fail fast outside development mode: every secret set, the database chosen, auth on."""
        if self.env != "production":
            return self
        missing = []
        if self.id_key == DEV_ID_KEY:
            missing.append("ADAPTER_ID_KEY (the id secret; not the development default)")
        if not self.pseudonym_key:
            missing.append("ADAPTER_PSEUDONYM_KEY (the network's pseudonym secret)")
        if not self.token_key or len(self.token_key) < 32:
            missing.append("ADAPTER_TOKEN_KEY (the access-token signing key, at least 32 characters)")
        if self.database_url == DEFAULT_DATABASE_URL:
            missing.append("ADAPTER_DATABASE_URL (the production database; not the embedded SQLite default)")
        if self.auth is False:
            missing.append("ADAPTER_AUTH cannot be false in production")
        if not self.base_url or not self.base_url.startswith(("https://", "http://")):
            missing.append("ADAPTER_BASE_URL (the public FHIR base URL: the audience of every token, never taken from "
                           "a request's Host header)")
        if missing:
            raise ValueError("production settings are incomplete: " + "; ".join(missing))
        return self


@lru_cache
def get_settings() -> Settings:
    """Return the process-wide settings (cached)."""
    return Settings()
