"""Rendered parts on disk: the build's intermediate files (and the render cache's entries).

A part is written once by a render worker and read once or twice by the same build (decontamination
reads its ``inputs``, the writer reads it whole), so it is an Arrow IPC file, not Parquet: on this
project's benchmark rows IPC+LZ4 writes about 3x faster than zstd Parquet and reads about 5x faster,
at roughly three times the size, and uncompressed IPC (a part no cache keeps) twice as fast again.
Only the published split files are Parquet (pipeline/writer.py).

Every record batch of a part holds exactly ``batch_rows`` rows (the last one fewer), whatever sizes
the renderer hands over, and the file says so in its schema metadata: so the same rows give the same
batches (the differential tests and the split files' row groups rely on that), and a reader can start
at any row without decompressing what comes before it (the split writer's processes do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.ipc as ipc

SUFFIX = ".arrow"
BATCH_ROWS = 4096
_KEY = b"flanbuild.batch_rows"


class PartWriter:
    """Writes tables of any size to a part (a path, or an in-memory sink for a Dask worker).

    ``compress=False`` for a part that only lives while its build runs (no cache): LZ4 costs more time
    (0.4 s per million benchmark rows written, 0.1 s read) than the page cache saves on a file read back
    within seconds; a part the cache keeps, or one sent over the network, is compressed.
    """

    def __init__(self, where: Path | pa.NativeFile, schema: pa.Schema, batch_rows: int = BATCH_ROWS,
                 compress: bool = True):
        self.schema, self.batch_rows = schema, batch_rows
        schema = schema.with_metadata({**(schema.metadata or {}), _KEY: str(batch_rows).encode()})
        options = ipc.IpcWriteOptions(compression="lz4" if compress else None)
        self._writer = ipc.new_file(str(where) if isinstance(where, Path) else where, schema, options=options)
        self._pending: list[pa.Table] = []
        self._count = 0

    def write_table(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._count += table.num_rows
        if self._count < self.batch_rows:
            return
        whole, at = pa.concat_tables(self._pending), 0
        while whole.num_rows - at >= self.batch_rows:
            self._write(whole.slice(at, self.batch_rows))
            at += self.batch_rows
        rest = whole.slice(at)
        self._pending, self._count = ([rest] if rest.num_rows else []), rest.num_rows

    def _write(self, table: pa.Table) -> None:
        self._writer.write_batch(table.combine_chunks().to_batches()[0])  # never empty: see write_table

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self._count:
            self._write(pa.concat_tables(self._pending))
        self._writer.close()


def _reader(path: Path) -> ipc.RecordBatchFileReader:
    return ipc.open_file(pa.OSFile(str(path)))  # not memory-mapped: pages read stay out of RSS


def batches(path: Path, columns: list[str] | None = None, start: int = 0) -> Iterator[pa.RecordBatch]:
    """The part's rows from row ``start`` on, batch by batch (only ``columns``, if given)."""
    reader = _reader(path)
    size = int((reader.schema.metadata or {}).get(_KEY, 0))
    first = start // size if size else 0
    skip = start - first * size
    for i in range(first, reader.num_record_batches):
        batch = reader.get_batch(i)
        if columns is not None:
            batch = batch.select(columns)
        if skip:
            batch, skip = batch.slice(min(skip, batch.num_rows)), max(0, skip - batch.num_rows)
        if batch.num_rows:
            yield batch


def num_rows(path: Path) -> int:
    return _reader(path).count_rows()


def schema(path: Path) -> pa.Schema:
    return _reader(path).schema
