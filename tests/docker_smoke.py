"""``make docker-smoke``: replay the Dockerfile without a Docker engine (none runs on these machines).

Reads the Dockerfile with dockerfile-parse, copies what its COPY instructions copy into a fresh
folder standing for ``/app``, replays its install commands (``python -m venv``, ``pip install``)
in a fresh virtual environment standing for ``/opt/venv``, sets its ENV (paths remapped), adds the
secrets an operator passes with ``docker run -e``, starts its CMD on a free port and runs its
HEALTHCHECK until ``/health/ready`` answers 200. Exit 0 on success, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:  # noqa: C901
    df = DockerfileParser(path=str(ROOT / "Dockerfile"))
    work = Path(tempfile.mkdtemp(prefix="docker-smoke-"))
    app, venv = work / "app", work / "opt-venv"
    app.mkdir()

    def remap(s: str) -> str:
        return s.replace("/opt/venv", str(venv)).replace("/app", str(app))

    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")}
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{venv}/bin:" + "/usr/local/bin:/usr/bin:/bin"
    cmd: list[str] = []
    health: list[str] = []
    try:
        for ins in df.structure:
            name, value = ins["instruction"], ins["value"]
            if name == "COPY" and not value.startswith("--from"):
                *sources, _dest = value.split()
                for src in sources:
                    target = app / Path(src).name
                    if (ROOT / src).is_dir():
                        shutil.copytree(ROOT / src, target, dirs_exist_ok=True)
                    else:
                        shutil.copy2(ROOT / src, target)
            elif name == "RUN" and (value.startswith("python -m venv") or "pip install" in value):
                line = remap(value).replace("python -m venv", f"{sys.executable} -m venv", 1)
                print(f"+ {line}", flush=True)  # noqa: T201
                subprocess.run(line, shell=True, check=True, cwd=app, env=env)  # noqa: S602  (the Dockerfile's own RUN lines)
            elif name == "ENV":
                for k, v in df.envs.items():
                    env[k] = remap(v.replace("$PATH", env["PATH"])) if k != "PATH" else f"{venv}/bin:{env['PATH']}"
            elif name == "CMD":
                cmd = json.loads(value)
            elif name == "HEALTHCHECK":
                health = json.loads(value.split("CMD", 1)[1].strip())
        port = _free_port()
        (app / "data" / "exports").mkdir(parents=True, exist_ok=True)
        env.update({"ADAPTER_PORT": str(port), "ADAPTER_DATABASE_URL": f"sqlite:///{work}/adapter.sqlite3",
                    "ADAPTER_ID_KEY": "smoke-id-key-" + "x" * 32, "ADAPTER_PSEUDONYM_KEY": "smoke-pseudonym-" + "x" * 32,
                    "ADAPTER_TOKEN_KEY": "smoke-token-" + "x" * 32, "ADAPTER_BASE_URL": f"http://127.0.0.1:{port}"})
        print(f"+ {shlex.join(cmd)}  (port {port})", flush=True)  # noqa: T201
        server = subprocess.Popen([remap(c) for c in cmd], cwd=app, env=env)  # noqa: S603
        try:
            check = [c.replace("8000", str(port)) for c in health]
            check[0] = str(venv / "bin" / check[0])
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                if server.poll() is not None:
                    print("the server exited", file=sys.stderr)  # noqa: T201
                    return 1
                if subprocess.run(check, env=env, capture_output=True).returncode == 0:  # noqa: S603
                    print("HEALTHCHECK passed: /health/ready answered 200")  # noqa: T201
                    return 0
                time.sleep(1)
            print("HEALTHCHECK did not pass within 90 s", file=sys.stderr)  # noqa: T201
            return 1
        finally:
            server.terminate()
            server.wait(20)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
