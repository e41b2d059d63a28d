"""What is inside a built mixture: one streaming pass over its split Parquet files.

``scan(out_dir, manifest)`` reads each split once, batch by batch (memory does not grow with the
number of rows), and collects

* rows per (task, template type),
* exact character-length distributions of ``inputs`` and ``targets`` (a count per distinct length,
  overall and per cluster),
* a few example rows per task and a sample of rows for token counts, chosen by seeded keys of the row
  position (``seeding.index_keys``), so the choice is deterministic and independent of batch sizes.

The card, ``flanbuild stats`` and the plots are all written from the resulting :class:`MixtureStats`.
Nothing heavy is imported here beyond pyarrow and numpy; a tokenizer is loaded only when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flanbuild.pipeline import seeding
from flanbuild.errors import FlanbuildError
from flanbuild.output.manifest import SPLITS, split_files

SCAN_BATCH_ROWS = 16_384
EXAMPLES_PER_TASK = 3  # candidates kept per task; the card shows 3 per cluster
TOKEN_SAMPLE_ROWS = 5_000  # rows per split tokenized when a tokenizer is given


# -- length distributions -----------------------------------------------------------------------

@dataclass
class LengthDist:
    """An exact distribution of lengths: how many rows have each length."""

    counts: dict[int, int] = field(default_factory=dict)

    def add(self, lengths: np.ndarray) -> None:
        if len(lengths) == 0:
            return
        values, counts = np.unique(np.asarray(lengths, dtype=np.int64), return_counts=True)
        self.add_counts(values, counts)

    def add_counts(self, values: np.ndarray, counts: np.ndarray) -> None:
        c = self.counts
        for v, n in zip(values.tolist(), counts.tolist()):
            c[v] = c.get(v, 0) + n

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.counts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        items = sorted(self.counts.items())
        return np.array([k for k, _ in items], np.int64), np.array([v for _, v in items], np.int64)

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    @property
    def total(self) -> int:
        return sum(k * v for k, v in self.counts.items())

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    @property
    def max(self) -> int:
        return max(self.counts) if self.counts else 0

    @property
    def min(self) -> int:
        return min(self.counts) if self.counts else 0

    def quantile(self, q: float) -> int:
        """The nearest-rank quantile (an actual length in the data)."""
        values, counts = self.arrays()
        if not len(values):
            return 0
        rank = max(1, int(np.ceil(q * counts.sum())))
        return int(values[np.searchsorted(np.cumsum(counts), rank)])

    def summary(self) -> dict:
        return {"n": self.n, "mean": round(self.mean, 1), "median": self.quantile(0.5), "p95": self.quantile(0.95),
                "max": self.max}


# -- the scan -------------------------------------------------------------------------------------

@dataclass
class MixtureStats:
    rows: dict[str, int] = field(default_factory=dict)  # split -> rows
    # (split, task) -> {template_type: rows}
    template_types: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    # (split, column) -> lengths in characters; column is "inputs" or "targets"
    chars: dict[tuple[str, str], LengthDist] = field(default_factory=dict)
    # (split, cluster, column) -> lengths in characters
    cluster_chars: dict[tuple[str, str, str], LengthDist] = field(default_factory=dict)
    # cluster -> up to 3 example rows (dicts in the output schema), from the split the cluster is in
    examples: dict[str, list[dict]] = field(default_factory=dict)
    # token counts (only with a tokenizer): (split, column) -> distribution over the sampled rows
    tokens: dict[tuple[str, str], LengthDist] = field(default_factory=dict)
    token_sample: dict[str, int] = field(default_factory=dict)  # split -> rows tokenized
    tokenizer: str | None = None

    def dist(self, split: str, column: str, unit: str = "chars") -> LengthDist:
        return (self.chars if unit == "chars" else self.tokens).get((split, column), LengthDist())


class _BottomK:
    """Per group, the k items with the smallest keys seen so far (streaming)."""

    def __init__(self, k: int):
        self.k = k
        self.items: dict[str, list[tuple[int, dict]]] = {}

    def offer(self, group: str, key: int, make_item) -> None:
        kept = self.items.setdefault(group, [])
        if len(kept) < self.k or key < kept[-1][0]:
            kept.append((key, make_item()))
            kept.sort(key=lambda kv: kv[0])
            del kept[self.k:]


def _dictionary(column) -> tuple[np.ndarray, list[str]]:
    """(codes, names) of a string column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    enc = pc.dictionary_encode(column)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary.to_pylist()


class StatsCollector:
    """Collects :class:`MixtureStats` from the rows of each split, batch by batch, in file order.

    The build feeds it the tables it writes (so the card needs no second pass over the output);
    :func:`scan` feeds it a finished build's files. The result does not depend on batch sizes.
    """

    def __init__(self, seed: int, tokenizer: str | None = None, token_sample: int = TOKEN_SAMPLE_ROWS):
        self.seed, self.token_sample = seed, token_sample
        self.st = MixtureStats(tokenizer=tokenizer)
        self._examples: dict[str, _BottomK] = {s: _BottomK(EXAMPLES_PER_TASK) for s in SPLITS}
        self._offset = {s: 0 for s in SPLITS}
        self._sample = {s: (np.zeros(0, np.uint64), [], []) for s in SPLITS}  # (keys, inputs, targets)

    def seek(self, split: str, position: int) -> None:
        """The next batch of ``split`` starts at row ``position`` (a collector for one file of a split
        that another process writes; see :meth:`merge`)."""
        self._offset[split] = position

    def merge(self, other: "StatsCollector") -> None:
        """Take in what ``other`` collected from later rows (files are merged in split order): the
        result is the same as one collector fed every batch in order."""
        st, theirs = self.st, other.st
        for mine, more in ((st.chars, theirs.chars), (st.cluster_chars, theirs.cluster_chars),
                           (st.tokens, theirs.tokens)):
            for key, dist in more.items():
                mine.setdefault(key, LengthDist()).add_counts(*dist.arrays())
        for key, types in theirs.template_types.items():
            d = st.template_types.setdefault(key, {})
            for ttype, n in types.items():
                d[ttype] = d.get(ttype, 0) + n
        for split in SPLITS:
            for group, items in other._examples[split].items.items():
                for key, item in items:
                    self._examples[split].offer(group, key, lambda item=item: item)
            keys, s_in, s_tg = self._sample[split]
            o_keys, o_in, o_tg = other._sample[split]
            keys, s_in, s_tg = np.concatenate([keys, o_keys]), s_in + o_in, s_tg + o_tg
            if len(keys) > self.token_sample:
                keep = np.argsort(keys, kind="stable")[:self.token_sample]
                keys, s_in, s_tg = keys[keep], [s_in[i] for i in keep], [s_tg[i] for i in keep]
            self._sample[split] = (keys, s_in, s_tg)
            self._offset[split] = max(self._offset[split], other._offset[split])

    def to_json(self) -> dict:
        """What has been collected, as JSON (a rebuild that reuses a split file takes its statistics from
        the cache: output/reuse.py). Dicts become lists of pairs, in insertion order."""
        st = self.st
        return {
            "chars": [[list(k), list(d.counts.items())] for k, d in st.chars.items()],
            "cluster_chars": [[list(k), list(d.counts.items())] for k, d in st.cluster_chars.items()],
            "template_types": [[list(k), list(v.items())] for k, v in st.template_types.items()],
            "examples": {s: [[g, items] for g, items in b.items.items()] for s, b in self._examples.items()},
            "offset": self._offset,
            "sample": {s: [keys.tolist(), ins, tgs] for s, (keys, ins, tgs) in self._sample.items()},
        }

    @classmethod
    def from_json(cls, doc: dict, seed: int, tokenizer: str | None = None,
                  token_sample: int = TOKEN_SAMPLE_ROWS) -> "StatsCollector":
        out = cls(seed, tokenizer, token_sample)
        st = out.st
        st.chars = {tuple(k): LengthDist(dict(map(tuple, c))) for k, c in doc["chars"]}
        st.cluster_chars = {tuple(k): LengthDist(dict(map(tuple, c))) for k, c in doc["cluster_chars"]}
        st.template_types = {tuple(k): dict(map(tuple, v)) for k, v in doc["template_types"]}
        for split, groups in doc["examples"].items():
            out._examples[split].items = {g: [tuple(item) for item in items] for g, items in groups}
        out._offset = dict(doc["offset"])
        out._sample = {s: (np.array(keys, dtype=np.uint64), ins, tgs) for s, (keys, ins, tgs) in doc["sample"].items()}
        return out

    def add(self, split: str, batch) -> None:
        """One batch (a pyarrow Table or RecordBatch in the output schema) of ``split``, in order."""
        n = batch.num_rows
        if n == 0:
            return
        pos = np.arange(self._offset[split], self._offset[split] + n, dtype=np.int64)
        self._offset[split] += n
        self._lengths(split, batch)
        self._template_types(split, batch)
        self._example_candidates(split, batch, pos)
        if self.st.tokenizer:
            self._token_sample(split, batch, pos)

    def _lengths(self, split: str, batch) -> None:
        import pyarrow.compute as pc

        c_codes, c_names = _dictionary(batch.column("cluster"))
        for col in ("inputs", "targets"):
            ln = pc.utf8_length(batch.column(col)).to_numpy(zero_copy_only=False).astype(np.int64)
            self.st.chars.setdefault((split, col), LengthDist()).add(ln)
            # per cluster: one np.unique over (cluster, length) pairs
            width = int(ln.max()) + 1
            pairs, counts = np.unique(c_codes * width + ln, return_counts=True)
            for c in np.unique(pairs // width).tolist():
                sel = (pairs // width) == c
                self.st.cluster_chars.setdefault((split, c_names[c], col), LengthDist()).add_counts(
                    pairs[sel] % width, counts[sel])

    def _template_types(self, split: str, batch) -> None:
        t_codes, t_names = _dictionary(batch.column("task_name"))
        y_codes, y_names = _dictionary(batch.column("template_type"))
        pairs, counts = np.unique(t_codes * len(y_names) + y_codes, return_counts=True)
        for p, cnt in zip(pairs.tolist(), counts.tolist()):
            d = self.st.template_types.setdefault((split, t_names[p // len(y_names)]), {})
            ttype = y_names[p % len(y_names)]
            d[ttype] = d.get(ttype, 0) + cnt

    def _example_candidates(self, split: str, batch, pos: np.ndarray) -> None:
        """Per task, the rows with the smallest seeded keys so far."""
        t_codes, t_names = _dictionary(batch.column("task_name"))
        keys = seeding.index_keys(self.seed, ("card-example", split), pos)
        order = np.lexsort((keys, t_codes))
        first = np.concatenate([[True], t_codes[order][1:] != t_codes[order][:-1]])
        group_start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
        for i in order[(np.arange(len(order)) - group_start) < EXAMPLES_PER_TASK].tolist():
            self._examples[split].offer(t_names[t_codes[i]], int(keys[i]),
                                        lambda i=i: batch.slice(i, 1).to_pylist()[0] | {"_position": int(pos[i])})

    def _token_sample(self, split: str, batch, pos: np.ndarray) -> None:
        """A seeded sample of rows to tokenize, the same whatever the batch boundaries."""
        s_keys, s_in, s_tg = self._sample[split]
        inputs, targets = batch.column("inputs"), batch.column("targets")
        tkeys = seeding.index_keys(self.seed, ("card-tokens", split), pos)
        take = np.argsort(tkeys, kind="stable")[:self.token_sample]
        if len(s_keys) >= self.token_sample:  # only rows that beat the current sample
            take = take[tkeys[take] < s_keys.max()]
        s_keys = np.concatenate([s_keys, tkeys[take]])
        s_in = s_in + [inputs[int(i)].as_py() for i in take]
        s_tg = s_tg + [targets[int(i)].as_py() for i in take]
        if len(s_keys) > self.token_sample:
            keep = np.argsort(s_keys, kind="stable")[:self.token_sample]
            s_keys, s_in, s_tg = s_keys[keep], [s_in[i] for i in keep], [s_tg[i] for i in keep]
        self._sample[split] = (s_keys, s_in, s_tg)

    def finish(self, manifest: dict) -> MixtureStats:
        """The statistics, once every split has been fed in full."""
        st = self.st
        st.rows = dict(self._offset)
        st.examples = _pick_examples(manifest, self._examples, self.seed)
        if st.tokenizer:
            encode = load_token_counter(st.tokenizer)
            for split, (keys, s_in, s_tg) in self._sample.items():
                order = np.argsort(keys, kind="stable").tolist()
                st.token_sample[split] = len(order)
                for col, texts in (("inputs", s_in), ("targets", s_tg)):
                    st.tokens[(split, col)] = dist = LengthDist()
                    dist.add(np.array(encode([texts[i] for i in order]), dtype=np.int64))
        return st


def scan(out_dir: Path, manifest: dict, *, tokenizer: str | None = None, token_sample: int = TOKEN_SAMPLE_ROWS,
         batch_rows: int = SCAN_BATCH_ROWS) -> MixtureStats:
    """Stream both splits of a finished build once and collect :class:`MixtureStats`."""
    import pyarrow.parquet as pq

    collector = StatsCollector(int(manifest["config"]["seed"]), tokenizer, token_sample)
    for split in SPLITS:
        for path in split_files(out_dir, manifest, split):
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
                collector.add(split, batch)
    return collector.finish(manifest)


def _pick_examples(manifest: dict, candidates: dict[str, _BottomK], seed: int) -> dict[str, list[dict]]:
    """Three rows per cluster, from as many different tasks as the cluster has (up to three)."""
    by_cluster: dict[str, list[tuple[str, str]]] = {}
    for name, t in sorted(manifest["tasks"].items()):
        by_cluster.setdefault(t["cluster"], []).append((t["role"], name))
    out: dict[str, list[dict]] = {}
    for cluster, members in sorted(by_cluster.items()):
        members.sort(key=lambda m: seeding.base_key(seed, "card-task", m[1]))
        lists = [[row for _, row in candidates[role].items.get(name, [])] for role, name in members]
        picked: list[dict] = []
        for depth in range(EXAMPLES_PER_TASK):
            for rows in lists:
                if depth < len(rows) and len(picked) < 3:
                    picked.append(rows[depth])
        if picked:
            out[cluster] = picked
    return out


# -- tokens ---------------------------------------------------------------------------------------

def load_token_counter(name_or_path: str):
    """``texts -> token counts`` for a tokenizer (no special tokens added).

    A ``tokenizer.json`` (a file, a directory holding one, or a hub id whose file is in the local
    Hugging Face cache or downloadable) is read with the ``tokenizers`` library; anything else falls
    back to ``transformers.AutoTokenizer`` (which imports torch, hence the fast path first).
    """
    from flanbuild.sources import offline

    offline.require_local(name_or_path, "tokenizer")  # offline and not cached: one line now, not 80 s of retries
    path = Path(name_or_path).expanduser()
    tok_file = None
    if path.is_file() and path.suffix == ".json":
        tok_file = path
    elif path.is_dir() and (path / "tokenizer.json").is_file():
        tok_file = path / "tokenizer.json"
    elif not path.exists() and name_or_path.count("/") <= 1 and not name_or_path.startswith((".", "/")):
        try:
            from huggingface_hub import hf_hub_download

            with offline.hub_offline():
                tok_file = Path(hf_hub_download(name_or_path, "tokenizer.json"))
        except Exception:  # noqa: BLE001 - not cached / offline / no tokenizer.json: try transformers
            tok_file = None
    if tok_file is not None:
        from tokenizers import Tokenizer

        try:
            tk = Tokenizer.from_file(str(tok_file))
        except Exception as e:  # noqa: BLE001
            raise FlanbuildError(f"cannot read tokenizer {tok_file}: {' '.join(str(e).split())[:200]}") from None
        return lambda texts: [len(e.ids) for e in tk.encode_batch(list(texts), add_special_tokens=False)]
    try:
        from transformers import AutoTokenizer

        with offline.hub_offline():
            tok = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FlanbuildError(f"cannot load tokenizer {name_or_path!r}: {first[:200]}") from None
    return lambda texts: [len(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]
