"""Decontamination: no training row may reproduce an evaluation input.

Before the splits are written, a train row is removed when its normalised input (lower-cased, runs of
punctuation and whitespace folded to one space) equals an eval row's, and, optionally, when it shares
an n-gram (13 words by default in the flan2022 recipe) with the source text of an eval example (the
string fields of the held-out examples, not the template wording, which tasks share by design).
Removals are counted per task.
"""

from __future__ import annotations

import bisect
import functools
import itertools
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


def ngram_keys(text: str, n: int) -> set[tuple[str, ...]]:
    """The text's word n-grams (the rule the vectorised check below implements; tests compare the two)."""
    words = normalise(text).split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


_MULT = np.uint64(0x9E3779B97F4A7C15)


def _ngram_hashes(ids: np.ndarray, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every n-word window that lies within one row and has only known words
    (``ids`` >= 0; a word the eval texts never use cannot be part of a shared n-gram), and each one's row."""
    m = len(ids) - n + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    h = np.zeros(m, dtype=np.uint64)
    for k in range(n):  # polynomial over the window's word ids, wrapping at 2**64
        h = h * _MULT + ids[k:k + m].astype(np.uint64) + np.uint64(1)
    unknown = np.concatenate([[0], np.cumsum(ids < 0)])
    ok = (unknown[n:] == unknown[:m]) & (rows[:m] == rows[n - 1:])
    return h[ok], rows[:m][ok]


def _word_ids(texts: Iterable[str], vocab: dict[str, int], grow: bool) -> tuple[np.ndarray, np.ndarray]:
    """(word ids, row of each word) of normalised texts; unknown words are -1 unless ``grow``."""
    ids: list[int] = []
    rows: list[int] = []
    lookup = vocab.setdefault if grow else vocab.get
    for r, text in enumerate(texts):
        words = normalise(text).split()
        ids.extend(lookup(w, len(vocab) if grow else -1) for w in words)
        rows.extend([r] * len(words))
    return np.asarray(ids, dtype=np.int64), np.asarray(rows, dtype=np.int64)


def normalise_array(texts: pa.Array) -> pa.Array:
    """``normalise`` for a whole Arrow column at once: lower-case, runs of anything but letters and
    digits folded to one space, trimmed. ASCII rows (nearly all) take a byte-table path in numpy, the
    others RE2 in C++; the two agree exactly on ASCII (tested). (Python's and utf8proc's case mappings
    differ on a few letters, e.g. 'İ' and final sigma; exact matching uses this function on both sides.)"""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if texts.type != pa.string() or texts.null_count or not len(texts):
        return _normalise_re2(texts)
    is_ascii = pc.string_is_ascii(texts).to_numpy(zero_copy_only=False)
    if is_ascii.all():  # in slices: the byte path's temporaries are several times the text's size
        pieces = [_normalise_ascii(texts.slice(i, 4096)) for i in range(0, len(texts), 4096)]
        return pieces[0] if len(pieces) == 1 else pa.concat_arrays(pieces)
    if not is_ascii.any():
        return _normalise_re2(texts)
    rows, others = np.flatnonzero(is_ascii), np.flatnonzero(~is_ascii)
    merged = pa.concat_arrays([normalise_array(texts.take(pa.array(rows))), _normalise_re2(texts.take(pa.array(others)))])
    back = np.empty(len(texts), dtype=np.int64)
    back[np.concatenate([rows, others])] = np.arange(len(texts))
    return merged.take(pa.array(back))


def _normalise_re2(texts: pa.Array) -> pa.Array:
    folded = pc.replace_substring_regex(pc.utf8_lower(texts), pattern=r"[^\p{L}\p{N}]+", replacement=" ")
    return pc.utf8_trim_whitespace(folded)


_ASCII_FOLD = np.full(256, ord(" "), dtype=np.uint8)  # a letter lower-cased, a digit kept, the rest a space
_ASCII_FOLD[np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789", np.uint8)] = np.frombuffer(
    b"abcdefghijklmnopqrstuvwxyz0123456789", np.uint8)
_ASCII_FOLD[np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8)] = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)


def _normalise_ascii(texts: pa.Array) -> pa.Array:
    """``normalise`` of ASCII strings on their bytes (4x RE2's speed, which replaces every run of
    separators through its match machinery): each byte through a table, then kept if it is a letter or
    digit, or the separator just before a word that is not its string's first."""
    n = len(texts)
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int32)[texts.offset:texts.offset + n + 1]
    lo, hi = int(offsets[0]), int(offsets[-1])
    data = _ASCII_FOLD[np.frombuffer(texts.buffers()[2], dtype=np.uint8, count=hi - lo, offset=lo)] \
        if hi > lo else np.zeros(0, dtype=np.uint8)
    rel = offsets - lo
    keep = data != ord(" ")
    word = keep.copy()  # a letter or digit that starts a word
    word[1:] &= ~keep[:-1]
    firsts = rel[:-1][rel[:-1] < len(data)]
    word[firsts] = keep[firsts]
    starts = np.flatnonzero(word)
    string_of = np.repeat(np.arange(n, dtype=np.int32), np.diff(rel))[starts]
    later = np.zeros(len(starts), dtype=bool)
    later[1:] = string_of[1:] == string_of[:-1]
    keep[starts[later] - 1] = True  # a separator (already a space) before a word that follows another
    ends = np.zeros(len(data) + 1, dtype=np.int32)
    np.cumsum(keep, out=ends[1:])
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(ends[rel]), pa.py_buffer(data[keep])])


AFFIX_CHARS = (64, 24, 8)  # raw prefix/suffix lengths tried when looking for what a group of rows shares


@dataclass
class EvalIndex:
    """What training rows are checked against: normalised eval inputs, and eval source n-grams."""

    inputs: pa.Array  # distinct normalised eval inputs, sorted (code point order, as Python sorts str)
    ngrams: np.ndarray  # sorted distinct hashes of the eval texts' n-grams (of word ids in ``vocab``)
    n: int
    vocab: dict[str, int] = field(default_factory=dict, repr=False)
    reversals: pa.Array | None = None  # the inputs reversed, sorted (for suffix lookups; built on first need)
    _lookups: dict = field(default_factory=dict, repr=False)  # built on first use: "prefix"/"suffix" (the
    # two sorted arrays as Python lists, for binary search), "vocab" (vocab's words in id order)

    @classmethod
    def build(cls, eval_inputs: Iterable[pa.Array], eval_texts: Iterable[str], n: int) -> "EvalIndex":
        return cls.from_normalised([normalise_array(a) for a in eval_inputs], eval_texts, n)

    @classmethod
    def from_normalised(cls, chunks: Iterable[pa.Array], eval_texts: Iterable[str], n: int) -> "EvalIndex":
        """From eval inputs already normalised (e.g. part by part in worker processes: normalised_inputs).
        Chunks that are each sorted merge fastest."""
        distinct = _merged_distinct(list(chunks))
        index = cls.from_sorted(pa.array(distinct, pa.string()), eval_texts, n)
        index._lookups["prefix"] = distinct  # the check's binary searches need this very list
        return index

    @classmethod
    def from_sorted(cls, inputs: pa.Array, eval_texts: Iterable[str], n: int,
                    reversals: pa.Array | None = None) -> "EvalIndex":
        """From distinct normalised inputs already sorted (and their sorted reversals), e.g. from the cache."""
        vocab: dict[str, int] = {}
        ngrams = np.zeros(0, dtype=np.uint64)
        if n:
            ngrams = np.unique(_ngram_hashes(*_word_ids(eval_texts, vocab, grow=True), n)[0])
        return cls(inputs, ngrams, n, vocab, reversals)

    def with_reversals(self) -> "EvalIndex":
        """This index with ``reversals`` built (what the cache stores, so that a rebuild does not sort)."""
        if self.reversals is None:
            self.reversals = pa.array(self._sorted("suffix"), pa.string())
        return self

    def __getstate__(self) -> dict:  # worker processes get the Arrow arrays; the Python lists are rebuilt there
        return {**self.__dict__, "_lookups": {}}

    @property
    def empty(self) -> bool:
        return len(self.inputs) == 0 and not len(self.ngrams)

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
        if check.any():  # the rows that may match, normalised in one call
            rows = np.flatnonzero(check)
            texts = inputs if len(rows) == len(inputs) else inputs.take(pa.array(rows))
            ordered = self._sorted("prefix")  # a binary search each (pc.is_in builds a hash set per call)
            keep[rows] = [not _starts_one(ordered, t, whole=True) for t in normalise_array(texts).to_pylist()]
        if self.n and len(self.ngrams):  # a row goes if one of its n-grams is an eval text's
            keep[self._ngram_rows(inputs)] = False
        return pa.array(keep)

    def _ngram_rows(self, inputs: pa.Array) -> np.ndarray:
        """Rows sharing an n-gram with an eval text. ASCII rows are split into words on whole columns
        (RE2 normalises them exactly as Python does, tested); the others word by word in Python."""
        is_ascii = pc.string_is_ascii(inputs).to_numpy(zero_copy_only=False)
        found = []
        for subset, words in ((np.flatnonzero(is_ascii), self._ascii_word_ids),
                              (np.flatnonzero(~is_ascii), lambda t: _word_ids(t.to_pylist(), self.vocab, grow=False))):
            if len(subset):
                texts = inputs if len(subset) == len(inputs) else inputs.take(pa.array(subset))
                hashes, rows = _ngram_hashes(*words(texts), self.n)
                at = np.searchsorted(self.ngrams, hashes)
                hit = at < len(self.ngrams)
                hit[hit] = self.ngrams[at[hit]] == hashes[hit]
                found.append(subset[rows[hit]])
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def _ascii_word_ids(self, texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        if "vocab" not in self._lookups:
            self._lookups["vocab"] = pa.array(sorted(self.vocab, key=self.vocab.get), pa.string())
        words = pc.split_pattern(normalise_array(texts), pattern=" ")
        flat, rows = pc.list_flatten(words), pc.list_parent_indices(words)
        real = pc.not_equal(flat, "")  # an empty text splits into one empty word
        ids = pc.fill_null(pc.index_in(flat.filter(real), value_set=self._lookups["vocab"]), -1)
        return (ids.to_numpy(zero_copy_only=False).astype(np.int64),
                rows.filter(real).to_numpy(zero_copy_only=False).astype(np.int64))

    def _may_match(self, texts: pa.Array) -> bool:
        if len(self.inputs) == 0:
            return False
        first = texts[0].as_py()
        for kind, test in (("prefix", pc.starts_with), ("suffix", pc.ends_with)):
            for size in AFFIX_CHARS:  # the longest affix all rows share is the most telling
                affix = first[:size] if kind == "prefix" else first[-size:]
                if not pc.all(test(texts, pattern=affix)).as_py():
                    continue
                norm = _normalised_affix(affix)
                if norm and not self._eval_has(kind, norm):
                    return False
                break  # a shorter affix is a weaker test: an eval input with this one has it too
        return True

    def _eval_has(self, kind: str, affix: str) -> bool:
        """Whether some eval input starts (ends) with ``affix``: a binary search in the sorted eval inputs
        (or their sorted reversals)."""
        return _starts_one(self._sorted(kind), affix if kind == "prefix" else affix[::-1])

    def _sorted(self, kind: str) -> list[str]:
        """The sorted eval inputs ("prefix") or their sorted reversals ("suffix") as a Python list."""
        if kind not in self._lookups:
            if kind == "prefix":
                self._lookups[kind] = self.inputs.to_pylist()
            elif self.reversals is not None:
                self._lookups[kind] = self.reversals.to_pylist()
            else:
                self._lookups[kind] = sorted(v[::-1] for v in self._sorted("prefix"))
        return self._lookups[kind]


def _starts_one(ordered: list[str], key: str, whole: bool = False) -> bool:
    """Whether a string of sorted ``ordered`` starts with ``key`` (equals it, with ``whole``)."""
    i = bisect.bisect_left(ordered, key)
    return i < len(ordered) and (ordered[i] == key if whole else ordered[i].startswith(key))


@functools.lru_cache(maxsize=4096)
def _normalised_affix(affix: str) -> str:
    """``normalise`` of one affix: Python's rule for ASCII (where it and RE2 agree exactly, and no regex
    is compiled per call), RE2's otherwise."""
    return normalise(affix) if affix.isascii() else normalise_array(pa.array([affix], pa.string()))[0].as_py()


def normalised_inputs(piece: tuple[Path, int, int]) -> pa.Array:
    """The distinct normalised inputs of rows ``start``..``stop`` of a rendered eval part, sorted.

    Sorting here, piece by piece (in worker processes when there are several), leaves the index only a
    merge of sorted runs to do: at paper scale (415k eval inputs), nine sorts of 46k rows and the merge
    take 0.4 s against 0.75 s for one sort of all of them."""
    path, start, stop = piece
    chunks, at = [], start
    for batch in parts.batches(path, columns=["inputs"], start=start):
        if at >= stop:
            break
        chunks.append(normalise_array(batch.column("inputs").slice(0, stop - at)))
        at += batch.num_rows
    values = pa.chunked_array(chunks, pa.string()).combine_chunks() if chunks else pa.array([], pa.string())
    ordered = values.take(pc.sort_indices(values))
    if len(ordered) < 2:
        return ordered
    new = np.ones(len(ordered), dtype=bool)
    new[1:] = pc.not_equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1)).to_numpy(zero_copy_only=False)
    return ordered.filter(pa.array(new))


def _merged_distinct(chunks: list[pa.Array]) -> list[str]:
    """The distinct strings of ``chunks``, sorted. Python's sort (Timsort) finds the sorted runs that
    ``normalised_inputs`` returns and only merges them; Arrow's sort would compare as if nothing were
    sorted. Arrow orders strings by their UTF-8 bytes, which is Python's code point order, so a run
    Arrow sorted is a run here."""
    values = pa.chunked_array(chunks, pa.string()).to_pylist()
    values.sort()
    return [v for v, _ in itertools.groupby(values)]
