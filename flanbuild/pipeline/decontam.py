"""Decontamination: no training row may reproduce an evaluation input.

Before the splits are written, a train row is removed when its normalised input (lower-cased, runs of
punctuation and whitespace folded to one space) equals an eval row's, and, optionally, when it shares
an n-gram (13 words by default in the flan2022 recipe) with the source text of an eval example (the
string fields of the held-out examples, not the template wording, which tasks share by design).
Removals are counted per task.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flanbuild.pipeline import parts

_FOLD = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    return _FOLD.sub(" ", text.lower()).strip()


def ngram_keys(text: str, n: int) -> set[int]:
    """Hashes of the text's word n-grams. Python's own hash: only membership within one process matters."""
    words = normalise(text).split()
    return {hash(tuple(words[i:i + n])) for i in range(len(words) - n + 1)}


def normalise_array(texts: pa.Array) -> pa.Array:
    """``normalise`` for a whole Arrow column at once (RE2 in C++): lower-case, runs of anything but
    letters and digits folded to one space, trimmed. (Python's and utf8proc's case mappings differ on
    a few letters, e.g. 'İ' and final sigma; exact matching uses this function on both sides.)"""
    folded = pc.replace_substring_regex(pc.utf8_lower(texts), pattern=r"[^\p{L}\p{N}]+", replacement=" ")
    return pc.utf8_trim_whitespace(folded)


AFFIX_CHARS = (64, 24, 8)  # raw prefix/suffix lengths tried when looking for what a group of rows shares


@dataclass
class EvalIndex:
    """What training rows are checked against: normalised eval inputs, and eval source n-grams."""

    inputs: pa.Array  # distinct normalised eval inputs
    ngrams: set[int]
    n: int
    _affixes: dict = field(default_factory=dict, repr=False)  # "prefix"/"suffix": sorted eval inputs (reversed); "set"
    _normalised: dict = field(default_factory=dict, repr=False)  # raw affix -> normalised (one regex call each)

    @classmethod
    def build(cls, eval_inputs: Iterable[pa.Array], eval_texts: Iterable[str], n: int) -> "EvalIndex":
        return cls.from_normalised([normalise_array(a) for a in eval_inputs], eval_texts, n)

    @classmethod
    def from_normalised(cls, chunks: Iterable[pa.Array], eval_texts: Iterable[str], n: int) -> "EvalIndex":
        """From eval inputs already normalised (e.g. part by part in worker processes: normalised_inputs)."""
        ngrams: set[int] = set()
        if n:
            for text in eval_texts:
                ngrams |= ngram_keys(text, n)
        chunks = list(chunks)
        inputs = pc.unique(pa.chunked_array(chunks, pa.string()).combine_chunks()) if chunks else pa.array([], pa.string())
        return cls(inputs, ngrams, n)

    @property
    def empty(self) -> bool:
        return len(self.inputs) == 0 and not self.ngrams

    def keep_mask(self, inputs: pa.Array, groups: pa.Array | None = None) -> pa.Array:
        """True for the rows of a batch that may stay in train.

        Rows are checked group by group (``groups``: one template's rows share a group id). A group
        whose rows all begin, or all end, with the same raw text whose normalised form begins (ends)
        no eval input cannot match one, whatever follows: such a group skips the regular expression
        over every row, which is most of the cost of decontaminating (normalising is applied per
        character and folds runs, so the normalised affix is an affix of every row's normalised text).
        """
        keep = np.ones(len(inputs), dtype=bool)
        check = np.zeros(len(inputs), dtype=bool)
        ids = groups.to_numpy(zero_copy_only=False) if groups is not None else np.zeros(len(inputs), dtype=np.int64)
        for group in np.unique(ids):
            rows = np.flatnonzero(ids == group)
            check[rows] = self._may_match(inputs if len(rows) == len(inputs) else inputs.take(pa.array(rows)))
        if check.any():  # one membership test for all of them (each builds a hash set of the eval inputs)
            rows = np.flatnonzero(check)
            texts = inputs if len(rows) == len(inputs) else inputs.take(pa.array(rows))
            if "set" not in self._affixes:  # a Python set, built once (pc.is_in builds one per call)
                self._affixes["set"] = set(self.inputs.to_pylist())
            found = self._affixes["set"]
            keep[rows] = [t not in found for t in normalise_array(texts).to_pylist()]
        if self.n and self.ngrams:
            texts = inputs.to_pylist()
            keep &= np.array([ngram_keys(t, self.n).isdisjoint(self.ngrams) for t in texts], dtype=bool)
        return pa.array(keep)

    def _may_match(self, texts: pa.Array) -> bool:
        if len(self.inputs) == 0:
            return False
        first = texts[0].as_py()
        for kind, test in (("prefix", pc.starts_with), ("suffix", pc.ends_with)):
            for size in AFFIX_CHARS:  # the longest affix all rows share is the most telling
                affix = first[:size] if kind == "prefix" else first[-size:]
                if not pc.all(test(texts, pattern=affix)).as_py():
                    continue
                norm = self._normalised_affix(affix)
                if norm and not self._eval_has(kind, norm):
                    return False
                break  # a shorter affix is a weaker test: an eval input with this one has it too
        return True

    def _eval_has(self, kind: str, affix: str) -> bool:
        """Whether some eval input starts (ends) with ``affix``: a binary search in the sorted eval inputs
        (or their sorted reversals), built on first use."""
        if kind not in self._affixes:
            values = self.inputs.to_pylist()
            self._affixes[kind] = sorted(values if kind == "prefix" else (v[::-1] for v in values))
        ordered = self._affixes[kind]
        key = affix if kind == "prefix" else affix[::-1]
        i = bisect.bisect_left(ordered, key)
        return i < len(ordered) and ordered[i].startswith(key)

    def _normalised_affix(self, affix: str) -> str:
        if affix.isascii():  # where Python's rule and RE2's agree exactly (and no regex is compiled per call)
            return normalise(affix)
        if affix not in self._normalised:
            self._normalised[affix] = normalise_array(pa.array([affix], pa.string()))[0].as_py()
        return self._normalised[affix]


def normalised_inputs(piece: tuple[Path, int, int]) -> pa.Array:
    """The distinct normalised inputs of rows ``start``..``stop`` of a rendered eval part."""
    path, start, stop = piece
    chunks, at = [], start
    for batch in parts.batches(path, columns=["inputs"], start=start):
        if at >= stop:
            break
        chunks.append(normalise_array(batch.column("inputs").slice(0, stop - at)))
        at += batch.num_rows
    return pc.unique(pa.chunked_array(chunks, pa.string()).combine_chunks()) if chunks else pa.array([], pa.string())
