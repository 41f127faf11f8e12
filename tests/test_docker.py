"""The Dockerfile, checked without a Docker engine (none runs here): hadolint finds nothing, and
its structure is what operators expect. ``make docker-smoke`` (in CI) replays its install and
start commands and waits for the HEALTHCHECK to pass."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    proc = subprocess.run([str(hadolint), "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "Dockerfile")],  # noqa: S603
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


def test_the_dockerfile_has_what_operators_expect() -> None:
    df = DockerfileParser(path=str(ROOT / "Dockerfile"))
    froms = [i["value"] for i in df.structure if i["instruction"] == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build")  # multi-stage
    for f in froms:  # Python 3.11 slim, pinned to a patch release
        assert re.match(r"^python:3\.11\.\d+-slim-\w+( AS build)?$", f), f
    final = df.structure[[i["instruction"] for i in df.structure].index("FROM", 1):]
    runs = " ".join(i["value"] for i in df.structure if i["instruction"] == "RUN")
    assert "pip install --no-cache-dir -r requirements.txt" in runs  # the pinned requirements
    user = [i["value"] for i in final if i["instruction"] == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert [i["value"] for i in final if i["instruction"] == "EXPOSE"] == ["8000 2575"]  # REST API, MLLP
    health = [i["value"] for i in final if i["instruction"] == "HEALTHCHECK"]
    assert len(health) == 1 and "/health/ready" in health[0]
    assert json.loads(next(i["value"] for i in final if i["instruction"] == "CMD")) == ["adapter", "serve", "--host", "0.0.0.0"]
    env = df.envs
    assert env["ADAPTER_ENV"] == "production"
    assert not [k for k in env if k.endswith("_KEY") or "PASSWORD" in k or k == "ADAPTER_DATABASE_URL"]  # secrets: runtime only
    copied = [i["value"].split()[0] for i in df.structure if i["instruction"] == "COPY" and not i["value"].startswith("--from")]
    assert "examples" not in copied and "tests" not in copied
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".adapter-data", ".env", "tests"} <= set(ignored)


def test_the_compose_file_runs_the_adapter_with_postgresql() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    adapter, db = compose["services"]["adapter"], compose["services"]["db"]
    assert db["image"].startswith("postgres:") and adapter["depends_on"]["db"]["condition"] == "service_healthy"
    assert adapter["environment"]["ADAPTER_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert all("${" in adapter["environment"][k] for k in ("ADAPTER_ID_KEY", "ADAPTER_PSEUDONYM_KEY", "ADAPTER_TOKEN_KEY"))
