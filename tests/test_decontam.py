"""Decontamination's shortcut (a group of rows sharing an affix that no eval input can have skips the
regular expression) must decide exactly what normalising every row decides."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flanbuild.pipeline.decontam import EvalIndex, normalise, normalise_array

PIECES = ["", " ", "The movie", "the MOVIE!!", "Ünïcödé ß İstanbul ΣΑΣ", "emoji 🇫🇷", "\u3000wide\u3000", "?", "...",
          "line\nbreak", "a" * 80, "Question: is it good?", "OPTIONS:\n- yes\n- no", "\u200b", "x"]


def _brute(index: EvalIndex, inputs: pa.Array) -> list[bool]:
    return pc.invert(pc.is_in(normalise_array(inputs), value_set=index.inputs)).to_pylist()


@pytest.mark.parametrize("seed", range(6))
def test_shortcut_decides_like_normalising_every_row(seed):
    rng = random.Random(seed)
    templates = [(rng.choice(PIECES) + rng.choice(PIECES), rng.choice(PIECES)) for _ in range(4)]
    fields = [rng.choice(PIECES) + rng.choice(PIECES) + str(rng.randrange(50)) for _ in range(300)]
    groups = [rng.randrange(len(templates)) for _ in fields]
    inputs = [templates[g][0] + f + templates[g][1] for g, f in zip(groups, fields)]
    # eval: some train inputs with other case and punctuation, plus rows sharing only a template's affixes
    evals = [rng.choice(inputs).upper().replace(" ", " -- ") for _ in range(20)]
    evals += [templates[0][0] + "something else", "unrelated " + templates[1][1]]
    index = EvalIndex.build([pa.array(evals)], (), 0)
    mask = index.keep_mask(pa.array(inputs), pa.array(groups, pa.int32())).to_pylist()
    assert mask == _brute(index, pa.array(inputs))
    assert mask == index.keep_mask(pa.array(inputs)).to_pylist()  # one group: the same answer
    assert not all(mask)  # the copies were found


def test_shortcut_skips_only_what_cannot_match():
    train = pa.array([f'Review: "{w}" Positive or negative?' for w in ("good", "bad", "Fine!")])
    index = EvalIndex.build([pa.array(["Premise: x. Hypothesis: y?"])], (), 0)
    assert index.keep_mask(train).to_pylist() == [True] * 3
    assert not index._may_match(train)  # no eval input starts like these: no regular expression ran
    index = EvalIndex.build([pa.array(["REVIEW -- fine.. positive, or NEGATIVE"])], (), 0)
    assert index._may_match(train)
    assert index.keep_mask(train).to_pylist() == [True, True, False]


def test_ngrams_still_apply_to_every_row():
    eval_text = "one two three four five six"
    index = EvalIndex.build([pa.array(["something"])], [eval_text], 3)
    train = pa.array(["A: one two three!", "A: four five", "A: nothing here"])
    assert index.keep_mask(train, pa.array(np.zeros(3, dtype=np.int32))).to_pylist() == [False, True, True]


def test_ascii_affixes_normalise_like_the_column_version():
    """ASCII affixes are normalised in Python (no regex compiled per affix): the same rule there."""
    import string

    rng = random.Random(0)
    texts = ["".join(rng.choice(string.printable) for _ in range(rng.randrange(30))) for _ in range(2000)]
    assert [normalise(t) for t in texts] == normalise_array(pa.array(texts)).to_pylist()


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_ngrams_decide_like_word_tuples(seed):
    """The n-gram check hashes word ids in numpy; it must remove exactly the rows that share a word
    n-gram (as tuples of words) with an eval text."""
    from flanbuild.pipeline.decontam import ngram_keys

    rng = random.Random(seed)
    words = ["the", "cat", "Sat", "on", "a", "mat", "İstanbul", "ΣΑΣ", "don't", "x1", "--", "new"]
    evals = [" ".join(rng.choice(words) for _ in range(rng.randrange(2, 12))) for _ in range(30)]
    train = [" ".join(rng.choice(words) for _ in range(rng.randrange(0, 15))) for _ in range(400)]
    n = rng.choice([2, 3, 4])
    index = EvalIndex.build([pa.array(["unrelated"])], evals, n)
    eval_grams = set().union(*(ngram_keys(t, n) for t in evals))
    expected = [ngram_keys(t, n).isdisjoint(eval_grams) for t in train]
    assert index.keep_mask(pa.array(train, pa.string())).to_pylist() == expected
    assert not all(expected) and any(expected)


def test_ngrams_of_ascii_and_other_rows_in_one_batch():
    index = EvalIndex.build([pa.array(["unrelated"])], ["Ünïcödé words here and there", "plain words here and more"], 3)
    train = ["so: ÜNÏCÖDÉ words here!", "PLAIN-words here", "plain words there", "", "words here and"]
    assert index.keep_mask(pa.array(train)).to_pylist() == [False, False, True, True, False]


def test_the_index_is_sorted_as_python_sorts_its_inputs_and_their_reversals():
    """Arrow sorts the eval inputs (by UTF-8 bytes); the binary searches assume Python's code point order."""
    rng = random.Random(3)
    texts = [rng.choice(PIECES) + rng.choice(PIECES) + rng.choice(["é", "z", "\U0001F600", "ｚ", "A", ""])
             for _ in range(400)]
    index = EvalIndex.from_normalised([pa.array(texts)], (), 0)
    assert index.inputs.to_pylist() == sorted(set(texts))
    assert index.with_reversals().reversals.to_pylist() == sorted(t[::-1] for t in set(texts))
    # as workers hand them over: each piece sorted by Arrow, the pieces sharing strings
    runs = [pa.array(texts[a:a + 150]) for a in (0, 100, 250, 399)]
    runs = [r.take(pc.sort_indices(r)) for r in runs]
    merged = EvalIndex.from_normalised(runs, (), 0)
    assert merged.inputs.to_pylist() == merged._sorted("prefix") == sorted(set(texts))


@pytest.mark.parametrize("seed", range(6))
def test_ngrams_of_rows_sharing_a_long_prefix_decide_like_word_tuples(seed):
    """Rows of a template grouped together that share a long prefix lose exactly the rows word tuples
    say: n-grams inside the prefix, across its end (which may fall mid-word) and after it."""
    from flanbuild.pipeline.decontam import ngram_keys

    rng = random.Random(seed)
    words = ["the", "Cat", "sat", "on", "a", "mat", "x1", "don't", "--", "new", "_", "7", "ok."]
    text = lambda k: " ".join(rng.choice(words) for _ in range(k))  # noqa: E731
    evals = [text(rng.randrange(4, 14)) for _ in range(25)]
    n = rng.choice([3, 4, 5])
    filler = lambda k: " ".join(rng.choice(["alpha", "Beta", "gamma!", "d3lta"]) for _ in range(k))  # noqa: E731
    prefixes = [text(120),  # likely holds an eval n-gram itself: every row goes
                filler(80) + " " + text(3),  # no n-gram of its own, but its last words may start one
                filler(70) + " " + (tail := text(6) + " a")]  # ends mid-word: "a" may go on as "ax"
    evals.append(" ".join(tail.split()[-n:]))  # its last n words, "a" included, are an eval n-gram ("ax" is not)
    prefixes = [p[:256 + rng.randrange(200)] if i == 0 else p for i, p in enumerate(prefixes)]
    train, groups = [], []
    for _ in range(300):
        g = rng.randrange(len(prefixes) + 1)
        train.append((prefixes[g] if g < len(prefixes) else "") + rng.choice(["", " ", "x", "-"]) + text(rng.randrange(0, 12)))
        groups.append(g)
    index = EvalIndex.build([pa.array(["unrelated"])], evals, n)
    eval_grams = set().union(*(ngram_keys(t, n) for t in evals))
    expected = [ngram_keys(t, n).isdisjoint(eval_grams) for t in train]
    assert index.keep_mask(pa.array(train), pa.array(groups, pa.int32())).to_pylist() == expected
    assert any(expected) and not all(expected)


@pytest.mark.parametrize("seed", range(3))
def test_the_ascii_byte_path_normalises_like_re2(seed):
    """ASCII rows skip RE2: on every printable and control character, empty rows, sliced arrays and
    batches mixing ASCII with other rows, the answer is RE2's (and Python's, on ASCII)."""
    from flanbuild.pipeline.decontam import _normalise_re2

    rng = random.Random(seed)
    alphabet = [chr(i) for i in range(128)] + ["é", "İ", "ß", "Σ", "字", "😀", "\u00a0", "²"]
    texts = ["".join(rng.choice(alphabet[:128] if rng.random() < 0.8 else alphabet) for _ in range(rng.randrange(40)))
             for _ in range(3000)] + ["", "   ", "--", "A", "a-b", " x ", ""]
    column = pa.array(texts)
    assert normalise_array(column).to_pylist() == _normalise_re2(column).to_pylist()
    assert normalise_array(column.slice(17, 2000)).to_pylist() == _normalise_re2(column.slice(17, 2000)).to_pylist()
    ascii_only = [t for t in texts if t.isascii()]
    assert normalise_array(pa.array(ascii_only)).to_pylist() == [normalise(t) for t in ascii_only]
    assert normalise_array(pa.array(["A b", None])).to_pylist() == ["a b", None]
