"""Property-based API testing: schemathesis (its CLI, as a user would run it) against the service's
own OpenAPI document on the real server, both backends. No generated request may get a 5xx, and no
response may break its documented schema or content type. Bounded by --max-examples (seconds)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.server import Server


def test_schemathesis_finds_no_server_error_or_schema_violation(api: Server, tmp_path: Path) -> None:
    st = Path(sys.executable).parent / "schemathesis"
    proc = subprocess.run(  # noqa: S603  (our own virtualenv's executable, fixed arguments)
        [str(st), "run", f"{api.base}/openapi.json",
         "--checks", "not_a_server_error,response_schema_conformance,content_type_conformance",
         "--max-examples", "100", "--seed", "20261203", "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    tail = proc.stdout[-4000:]
    assert proc.returncode == 0, tail
    assert re.search(r"(\d+) generated, \1 passed", tail), tail  # every generated case passed
