"""Rows -> mapped and validated resources, in this process or in worker processes.

Mapping (adapter/mapping, pure functions of a row) and validation (pure functions of a resource)
are about two thirds of an ingestion's time; storing is the rest and stays in the calling process,
in its one database transaction. :func:`mapped_rows` yields each row with its :class:`RowResult`
(resources, or issues including validation findings) in the reader's order, whatever the number of
workers, so an ingestion's report, ids and stored content are the same serial or parallel (the
tests ingest the example exports both ways and compare).

Workers are started (``spawn``: a fresh interpreter, no state copied from the caller's threads or
database connections) only for a file that has more than :data:`PARALLEL_AFTER` rows: the first
rows are mapped here, so a small file never waits for a worker to start. Each worker loads the
mapping and the validators once; rows go out in chunks of :data:`CHUNK`, with at most two chunks
per worker in flight, so memory stays bounded by the window, not by the file.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import islice
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from adapter.errors import RowIssue
from adapter.mapping.base import SiteContext
from adapter.mapping.engine import RowResult, map_row
from adapter.readers.base import Row
from adapter.spec.loader import CompiledSheet, LoadedMapping
from adapter.validation import Validator

#: rows mapped in the calling process before workers are started
PARALLEL_AFTER = 5000
#: rows per task sent to a worker
CHUNK = 500


def default_workers() -> int:
    """Worker processes for a large file: the CPUs this process may use, at most 4 (1: serial)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 4))


def map_and_validate(row: Row, sheet: CompiledSheet, loaded: LoadedMapping, sc: SiteContext,
                     validator: Validator, full: bool) -> RowResult:
    """One row through the mapping engine, then each resource through ``validator``: every
    finding becomes a row issue (code ``invariant``) naming the resource type and the element."""
    result = map_row(row, sheet, loaded.ctx, sc)
    if result.ok:
        for res in result.resources:
            for vi in validator.validate(res, full=full):
                result.issues.append(RowIssue(row.file, row.sheet, row.row, None, None,
                                              f"{res['resourceType']} fails validation: {vi.message}",
                                              code="invariant", expression=[vi.expression], segment=row.segment))
    return result


_WORKER: dict[str, Any] = {}


def _start_worker(site: str, mapping: str, mappings_dir: Path, id_key: str, schema: Path, profiles: Path,
                  core_invariants: bool) -> None:
    from adapter.spec import load_mapping

    loaded = load_mapping(site, mapping, mappings_dir)
    _WORKER.update(loaded=loaded, sc=loaded.site_context(id_key),
                   validator=Validator(schema, profiles, core_invariants=core_invariants))


def _map_chunk(sheet_index: int, rows: list[Row], full: bool) -> list[tuple[Any, ...]]:
    loaded: LoadedMapping = _WORKER["loaded"]
    sheet = loaded.sheets[sheet_index]
    out = []
    for row in rows:
        r = map_and_validate(row, sheet, loaded, _WORKER["sc"], _WORKER["validator"], full)
        out.append((r.resources, r.issues, r.skipped, r.warnings))
    return out


def mapped_rows(reader: Any, loaded: LoadedMapping, sc: SiteContext, validator: Validator, full: bool,
                workers: int, source: tuple[str, str, Path, str]) -> Iterator[tuple[CompiledSheet, RowResult]]:
    """``(sheet, result)`` for every row of every sheet of ``reader``, in order. ``workers`` > 1
    maps the rows past :data:`PARALLEL_AFTER` in that many worker processes, each loading the
    mapping from ``source`` (site, mapping name, mappings folder, id key) and making a
    :class:`Validator` like ``validator`` (same schema, profiles and core-invariant switch).
    Raises what the reader raises (ReaderError); a worker that dies raises
    ``concurrent.futures.process.BrokenProcessPool``."""
    pool = _Pool(workers, (*source, validator.schema_path, validator.profiles_dir, validator.core_invariants))
    try:
        for index, sheet in enumerate(loaded.sheets):
            rows = reader.rows(sheet.sheet, set(sheet.columns))
            for row in islice(rows, PARALLEL_AFTER) if workers > 1 else rows:
                yield sheet, map_and_validate(row, sheet, loaded, sc, validator, full)
            if workers > 1:
                for row, result in pool.map(index, rows, full):
                    yield sheet, RowResult(row, *result)
    finally:
        pool.close()


class _Pool:
    """Worker processes, started at the first chunk."""

    def __init__(self, workers: int, initargs: tuple[Any, ...]) -> None:
        self.workers, self.initargs = workers, initargs
        self.executor: ProcessPoolExecutor | None = None

    def map(self, sheet_index: int, rows: Iterator[Row], full: bool) -> Iterator[tuple[Row, tuple[Any, ...]]]:
        """Each row with ``(resources, issues, skipped, warnings)``, in order; at most two chunks
        per worker in flight."""
        window: deque[tuple[list[Row], Future[list[tuple[Any, ...]]]]] = deque()

        def submit() -> bool:
            chunk = list(islice(rows, CHUNK))
            if not chunk:
                return False
            if self.executor is None:
                self.executor = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"),
                                                    initializer=_start_worker, initargs=self.initargs)
            window.append((chunk, self.executor.submit(_map_chunk, sheet_index, chunk, full)))
            return True

        while len(window) < 2 * self.workers and submit():
            pass
        while window:
            chunk, future = window.popleft()
            submit()
            yield from zip(chunk, future.result(), strict=True)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)
