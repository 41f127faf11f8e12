# The adapter as a container: `docker build -t pedall-fhir-adapter .` (see README: Docker).
# Stage 1 installs the pinned dependencies and the package into a virtual environment; stage 2
# copies that environment, the mapping files and the profiles, and runs as a non-root user.
# Settings come only from the environment (ADAPTER_*); production mode refuses to start without
# its secrets (ADAPTER_ID_KEY, ADAPTER_PSEUDONYM_KEY, ADAPTER_TOKEN_KEY, ADAPTER_DATABASE_URL) and its
# public base URL (ADAPTER_BASE_URL, the audience of every access token).

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
RUN python -m venv /opt/venv
COPY requirements.txt ./
RUN /opt/venv/bin/pip install --no-cache-dir -r requirements.txt
COPY pyproject.toml README.md ./
COPY adapter ./adapter
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps .

FROM python:3.11.11-slim-bookworm
RUN groupadd --system --gid 10001 adapter \
 && useradd --system --uid 10001 --gid adapter --home-dir /app --shell /usr/sbin/nologin adapter
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY mappings ./mappings
COPY profiles ./profiles
COPY views ./views
RUN mkdir -p /app/data/exports /app/data/audit-spool && chown -R adapter:adapter /app/data
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ADAPTER_ENV=production \
    ADAPTER_MAPPINGS_DIR=/app/mappings \
    ADAPTER_PROFILES_DIR=/app/profiles \
    ADAPTER_FHIR_SCHEMA_PATH=/app/profiles/fhir.r4.schema.json \
    ADAPTER_EXPORT_DIR=/app/data/exports \
    ADAPTER_AUDIT_SPOOL_DIR=/app/data/audit-spool \
    ADAPTER_PORT=8000 \
    ADAPTER_MLLP_HOST=0.0.0.0
USER 10001:10001
# 2575: HL7 v2 over MLLP, when ADAPTER_MLLP_SITE and ADAPTER_MLLP_MAPPING are set (README)
EXPOSE 8000 2575
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=4).status == 200 else 1)"]
CMD ["adapter", "serve", "--host", "0.0.0.0"]
