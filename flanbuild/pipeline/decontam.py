"""Decontamination: no training row may reproduce an evaluation input.

Before the splits are written, a train row is removed when its normalised input (lower-cased, runs of
punctuation and whitespace folded to one space) equals an eval row's, and, optionally, when it shares
an n-gram (13 words by default in the flan2022 recipe) with the source text of an eval example (the
string fields of the held-out examples, not the template wording, which tasks share by design).
Removals are counted per task.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

_FOLD = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    return _FOLD.sub(" ", text.lower()).strip()


def ngram_keys(text: str, n: int) -> set[int]:
    """Hashes of the text's word n-grams. Python's own hash: only membership within one process matters."""
    words = normalise(text).split()
    return {hash(tuple(words[i:i + n])) for i in range(len(words) - n + 1)}


def normalise_array(texts: pa.Array) -> pa.Array:
    """``normalise`` for a whole Arrow column at once (RE2 in C++): lower-case, runs of anything but
    letters and digits folded to one space, trimmed."""
    folded = pc.replace_substring_regex(pc.utf8_lower(texts), pattern=r"[^\p{L}\p{N}]+", replacement=" ")
    return pc.utf8_trim_whitespace(folded)


@dataclass
class EvalIndex:
    """What training rows are checked against: normalised eval inputs, and eval source n-grams."""

    inputs: pa.Array  # distinct normalised eval inputs
    ngrams: set[int]
    n: int

    @classmethod
    def build(cls, eval_inputs: Iterable[pa.Array], eval_texts: Iterable[str], n: int) -> "EvalIndex":
        ngrams: set[int] = set()
        if n:
            for text in eval_texts:
                ngrams |= ngram_keys(text, n)
        chunks = [normalise_array(a) for a in eval_inputs]
        inputs = pc.unique(pa.chunked_array(chunks, pa.string()).combine_chunks()) if chunks else pa.array([], pa.string())
        return cls(inputs, ngrams, n)

    @property
    def empty(self) -> bool:
        return len(self.inputs) == 0 and not self.ngrams

    def keep_mask(self, inputs: pa.Array) -> pa.Array:
        """True for the rows of a batch that may stay in train."""
        keep = pc.invert(pc.is_in(normalise_array(inputs), value_set=self.inputs))
        if self.n and self.ngrams:
            texts = inputs.to_pylist()
            keep = pa.array([k and ngram_keys(t, self.n).isdisjoint(self.ngrams) for k, t in zip(keep.to_pylist(), texts)])
        return keep


def filter_part(path: Path, index: EvalIndex) -> tuple[int, Counter]:
    """Rewrite a rendered train part without contaminated rows (streamed).

    Returns the rows kept and the removed rows counted by (template id, template type), so that the
    manifest's per-template numbers stay true after decontamination.
    """
    source = pq.ParquetFile(path)
    tmp = path.with_suffix(".decontaminated")
    kept, removed = 0, Counter()
    with pq.ParquetWriter(tmp, source.schema_arrow, compression="zstd") as writer:
        for batch in source.iter_batches(batch_size=8192):
            mask = index.keep_mask(batch.column("inputs"))
            n_kept = pc.sum(mask).as_py() or 0
            kept += n_kept
            if n_kept < batch.num_rows:
                gone = pa.Table.from_batches([batch]).filter(pc.invert(mask))
                removed.update(zip(gone.column("template_id").to_pylist(), gone.column("template_type").to_pylist()))
            writer.write_table(pa.Table.from_batches([batch]).filter(mask))
    if removed:
        tmp.replace(path)
    else:
        tmp.unlink()
    return kept, removed


def eval_inputs(paths: Iterable[Path]) -> Iterable[pa.Array]:
    """The inputs column of rendered eval parts, batch by batch."""
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=8192, columns=["inputs"]):
            yield batch.column("inputs")
