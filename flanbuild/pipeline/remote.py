"""Render shards that carry their own rows, for workers on other machines (``--engine dask``).

A shard's SplitData normally names files on the client (Parquet files, the datasets cache) that a
worker on another machine cannot open. ``ship`` replaces it with the rows the shard reads (its row
indices and its few-shot pool, nothing else, as one Arrow table) and the task without any in-memory
source tables, so what travels to a worker is bounded by the shard and a worker needs no filesystem
shared with the client. The worker renders exactly as it would from the files: ``ShippedRows.rows``
yields the same row numbers and the same row dicts as ``SplitData.rows`` on the original data.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from flanbuild.errors import FlanbuildError
from flanbuild.pipeline.render import RenderJob
from flanbuild.sources.loader import BATCH_ROWS, SplitData, to_rows


@dataclass
class ShippedRows(SplitData):
    """Some rows of a split: ``table``'s i-th row is row ``row_ids[i]`` of the original data's window."""

    row_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    source_rows: int = 0  # rows of the original window

    @property
    def num_rows(self) -> int:
        return self.source_rows

    def selected_batches(self, indices: np.ndarray, batch_rows: int = BATCH_ROWS):
        """The rows at sorted ``indices`` (duplicates allowed), which must be among the shipped ones."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) == 0:
            return
        pos = np.searchsorted(self.row_ids, indices)
        if pos.max() >= len(self.row_ids) or not np.array_equal(self.row_ids[pos], indices):
            raise FlanbuildError("a shard asked for source rows that were not shipped with it", where=self.origin)
        for a in range(0, len(indices), batch_rows):
            chunk = indices[a:a + batch_rows]
            rows = self.table.take(pa.array(pos[a:a + batch_rows])).combine_chunks()
            yield chunk, int(chunk[0]), rows.to_batches()[0]  # one record batch, like the files give

    def rows(self, indices: np.ndarray, batch_rows: int = BATCH_ROWS):
        for chunk, offset, batch in self.selected_batches(indices, batch_rows):
            yield chunk, to_rows(batch, self.origin, offset)

    def batches(self, batch_rows: int = BATCH_ROWS):
        raise FlanbuildError("shipped rows are a shard's rows only, not the whole split", where=self.origin)

    def window(self, start: int, stop: int | None) -> SplitData:
        raise FlanbuildError("shipped rows cannot be windowed", where=self.origin)

    def fingerprint(self) -> str:
        raise FlanbuildError("shipped rows have no cache identity (cache keys are computed on the client)",
                             where=self.origin)


def ship(job: RenderJob, data: SplitData) -> tuple[RenderJob, ShippedRows]:
    """The job and data a remote worker needs to render ``job`` over ``data``, without the client's files."""
    needed = np.unique(np.concatenate([np.asarray(job.indices, dtype=np.int64),
                                       np.asarray(job.exemplars, dtype=np.int64)]))
    table = data.take(needed)
    rows = ShippedRows(data.origin, data.features, table=table, read=data.read, row_ids=needed,
                       source_rows=data.num_rows)
    task = job.task
    if task.source.tables:  # the Python API's / NIv2's whole tables: the shipped rows replace them
        job = replace(job, task=replace(task, source=replace(task.source, tables={})))
    return job, rows

