"""Regular expressions from mapping files, run with a time limit.

Mapping files are written per site, and a pattern such as ``(a+)+$`` backtracks catastrophically
on some values (ReDoS): one bad row could stall an ingestion for hours. Patterns run on the
``regex`` library (a drop-in for ``re`` syntax) with its ``timeout``; a pattern that runs out of
time on a value raises :class:`~adapter.errors.TransformError`, which the engine reports as a
row-level issue naming the row, the column and the value.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import regex

from adapter.errors import TransformError

#: Seconds one pattern may spend on one value.
TIMEOUT = 0.25


@lru_cache(maxsize=512)
def _compiled(pattern: str, ignorecase: bool) -> Any:
    return regex.compile(pattern, regex.IGNORECASE if ignorecase else 0)


def search(pattern: str, text: str, ignorecase: bool = True) -> Any:
    """``regex.search`` of ``pattern`` in ``text`` (``re`` syntax), or ``None``. Raises
    :class:`TransformError` when it runs longer than :data:`TIMEOUT` seconds, and ``regex.error``
    for a pattern that does not compile (mapping files are checked when loaded)."""
    try:
        return _compiled(pattern, ignorecase).search(text, timeout=TIMEOUT)
    except TimeoutError:
        raise TransformError(text, f"the pattern /{pattern[:80]}/ ran out of time ({TIMEOUT} s) on this value: "
                             "it backtracks catastrophically; fix the pattern in the mapping file") from None
