"""Rendered parts on disk: the build's intermediate files (and the render cache's entries).

A part is written once by a render worker and read once or twice by the same build (decontamination
reads its ``inputs``, the writer reads it whole), so it is an Arrow IPC file with LZ4-compressed
buffers, not Parquet: on this project's benchmark rows IPC+LZ4 writes about 3x faster than zstd
Parquet and reads about 5x faster, at roughly three times the size. Only the published split files
are Parquet (pipeline/writer.py). Record batches keep the boundaries they were written with, so the
same rows written in the same batches give the same bytes (the cache and the differential tests rely
on that).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.ipc as ipc

SUFFIX = ".arrow"
_OPTIONS = ipc.IpcWriteOptions(compression="lz4")


class PartWriter:
    """Writes tables to a part file (a path, or an in-memory sink for a Dask worker)."""

    def __init__(self, where: Path | pa.NativeFile, schema: pa.Schema):
        self._writer = ipc.new_file(str(where) if isinstance(where, Path) else where, schema, options=_OPTIONS)

    def write_table(self, table: pa.Table) -> None:
        self._writer.write_table(table)

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, *exc) -> None:
        self._writer.close()


def _reader(path: Path) -> ipc.RecordBatchFileReader:
    return ipc.open_file(pa.memory_map(str(path)))


def batches(path: Path, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The part's record batches in order (only ``columns``, if given)."""
    reader = _reader(path)
    for i in range(reader.num_record_batches):
        batch = reader.get_batch(i)
        yield batch.select(columns) if columns is not None else batch


def num_rows(path: Path) -> int:
    return _reader(path).count_rows()


def schema(path: Path) -> pa.Schema:
    return _reader(path).schema
